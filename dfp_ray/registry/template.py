"""The pyfunc model directory of a DFP model version, built once per process and reused.

Why: ``mlflow.pyfunc.log_model`` re-derives everything about a model at every call (installed
package checks, the environment files, YAML dumps of the same content, run reads, metric
copies), ~0.18 s per registration on a 2-core Zen 3, more than half of a small user's whole
training. Everything in that directory except the autoencoder's own files and the MLmodel's
identity fields (model id, run id, time, size) is the same for every user of a schema.

So :class:`PyfuncTemplate` asks MLflow itself (``mlflow.pyfunc.save_model``, the models-from-
code flavour of ``registry_pyfunc.py``) for the directory once, with a placeholder autoencoder,
and :meth:`PyfuncTemplate.materialise` copies it per version, writes the real autoencoder
into the artifact slot and fills in MLmodel's identity fields. The files are MLflow's, not
re-created by hand, so ``mlflow.pyfunc.load_model("models:/...")`` reads them as it reads any
pyfunc model; the registry then logs the directory as an MLflow 3 logged model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:  # pragma: no cover
    from dfp_ray.autoencoder import DFPAutoencoder

MLMODEL = "MLmodel"
_PLACEHOLDER = "dfp-ray-placeholder"

try:  # libyaml is 10-20x faster than the pure-Python parser and emitter; same YAML either way
    YAML_LOADER: Any = yaml.CSafeLoader
    _Dumper: Any = yaml.CSafeDumper
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    YAML_LOADER, _Dumper = yaml.SafeLoader, yaml.SafeDumper


def _tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class PyfuncTemplate:
    """One schema's pyfunc model directory, minus the autoencoder (see the module docstring).

    ``model_artifact``/``schema_artifact`` are the pyfunc artifact names; ``schema_yaml`` the
    schema file's text; ``signature`` an ``mlflow.models.ModelSignature``; ``code_path`` the
    models-from-code file; ``pip_requirements`` the pinned requirements. The directory lives
    in a temporary folder removed when the template is garbage-collected or the process exits.
    """

    def __init__(
        self,
        *,
        code_path: Path,
        model_artifact: str,
        schema_artifact: str,
        schema_yaml: str,
        signature: Any,
        pip_requirements: list[str],
    ) -> None:
        import mlflow.pyfunc

        _remove_orphans()
        self._root = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-"))
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self._root), True)
        inputs = self._root / "inputs"
        (inputs / model_artifact).mkdir(parents=True)
        (inputs / model_artifact / _PLACEHOLDER).write_text(
            "replaced by the autoencoder at each registration\n"
        )
        (inputs / "schema.yaml").write_text(schema_yaml)
        self.path = self._root / "model"
        mlflow.pyfunc.save_model(
            str(self.path),
            python_model=str(code_path),
            artifacts={
                model_artifact: str(inputs / model_artifact),
                schema_artifact: str(inputs / "schema.yaml"),
            },
            signature=signature,
            pip_requirements=pip_requirements,
        )
        self.mlmodel: dict[str, Any] = yaml.load((self.path / MLMODEL).read_text(), Loader=YAML_LOADER)
        artifacts = self.mlmodel["flavors"]["python_function"]["artifacts"]
        # where the pyfunc flavour reads the autoencoder from, relative to the model directory
        self.model_subpath = str(artifacts[model_artifact]["path"])
        shutil.rmtree(self.path / self.model_subpath)

    def materialise(self, dest: Path, model: DFPAutoencoder) -> Path:
        """Copy the template to ``dest`` (created, or an empty folder such as a new logged model's
        artifact folder) and save ``model`` into its artifact slot. MLmodel is written by
        :meth:`write_mlmodel` once the logged model's identity is known."""
        shutil.copytree(self.path, dest, ignore=shutil.ignore_patterns(MLMODEL), dirs_exist_ok=True)
        model.save(dest / self.model_subpath)
        return dest

    def write_mlmodel(
        self, dest: Path, *, model_id: str, run_id: str, artifact_path: str, signature: Any | None = None
    ) -> None:
        """MLmodel for one version: the template's, with this version's identity and size (the
        size is of the other files, as MLflow computes it before writing MLmodel)."""
        spec = dict(self.mlmodel)
        spec.update(
            artifact_path=artifact_path,
            model_uuid=model_id,
            model_id=model_id,
            run_id=run_id,
            utc_time_created=datetime.now(timezone.utc).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f"),
            model_size_bytes=_tree_size(dest),
        )
        if signature is not None:
            spec["signature"] = signature.to_dict()
        (dest / MLMODEL).write_text(yaml.dump(spec, Dumper=_Dumper, default_flow_style=False))


_PREFIX = "dfp-pyfunc-template-"


def _remove_orphans() -> None:
    """Remove the template folders of processes that died without cleaning up (a killed
    actor's finalizers never run): ``<tmp>/dfp-pyfunc-template-<pid>-*`` whose pid is gone."""
    for folder in Path(tempfile.gettempdir()).glob(f"{_PREFIX}*-*"):
        pid = folder.name[len(_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:  # exists, another user's: leave it
            continue
