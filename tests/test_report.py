"""The HTML report and the `dfp-ray report` command, on hand-built score frames."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pandas as pd
import pytest

from dfp_ray.cli import main
from dfp_ray.tools.report import top_contributing_features, write_html_report

HOSTILE = "<script>alert('x')</script>"
FEATURES = ["accessdevicebrowser", "reason", "logcount"]


def _scores() -> pd.DataFrame:
    """40 events over 4 users; 5 with high scores (4 labelled anomalies + 1 false positive).

    z-losses are set so each detection's feature ranking is known: for the anomalies
    reason > logcount > accessdevicebrowser; for the false positive logcount first.
    """
    rng = np.random.default_rng(3)
    n = 40
    users = np.array(["alice", "bob", HOSTILE, "dollar$user$"])[np.arange(n) % 4]
    df = pd.DataFrame(
        {
            "event_id": [f"ev{i:03d}" for i in range(n)],
            "username": users,
            "timestamp": pd.date_range("2022-08-30", periods=n, freq="37min", tz="UTC").strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
            "accessdevicebrowser": ["Chrome"] * n,
            "reason": ["user_approved"] * n,
            "logcount": np.arange(n) % 7,
        }
    )
    z = rng.uniform(0.1, 0.9, size=(n, 3))
    anomalies = [5, 10, 14, 30]  # ev005 (bob), ev010 (hostile), ev014 (hostile), ev030 (hostile)
    z[anomalies] = [1.0, 9.0, 4.0]
    z[21] = [0.5, 0.2, 15.0]  # ev021 (bob): a false positive driven by logcount
    df.loc[anomalies, "reason"] = "<b>invalid_passcode</b>"
    for j, f in enumerate(FEATURES):
        df[f + "_loss"] = z[:, j] / 10
        df[f + "_z_loss"] = z[:, j]
        df[f + "_pred"] = df[f]
    df["logcount_pred"] = 0.5
    df["max_abs_z"] = z.max(axis=1)
    df["mean_abs_z"] = z.mean(axis=1)
    df["event_time"] = "2022-09-01T00:00:00Z"
    df["model_version"] = np.where(users == "alice", "DFP-duo-generic_user:1", "DFP-duo-" + users + ":2")
    return df


def _truth() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "event_id": ["ev005", "ev010", "ev014", "ev030", "ev999"],
            "source": "duo",
            "username": ["bob", HOSTILE, HOSTILE, HOSTILE, "bob"],
            "timestamp": "2022-08-30T00:00:00Z",
            "kind": ["new_location", "invalid_passcode", "invalid_passcode", "new_location", "odd_hours"],
        }
    )


def test_top_contributing_features_ranks_by_z():
    df = _scores()
    ranks = top_contributing_features(df.loc[[5, 21]], top_n=2)
    assert len(ranks) == 2
    assert ranks[0]["feature"].tolist() == ["reason", "logcount"]
    assert ranks[1]["feature"].tolist() == ["logcount", "accessdevicebrowser"]
    assert ranks[0]["z"].tolist() == [9.0, 15.0]
    assert ranks[0]["value"].tolist() == ["<b>invalid_passcode</b>", 21 % 7]
    assert ranks[0]["pred"].tolist() == ["<b>invalid_passcode</b>", 0.5]
    assert ranks[0].index.tolist() == [5, 21]
    # NaN z-losses rank last; a feature without a value column gives None, not an error
    df.loc[5, "reason_z_loss"] = np.nan
    df = df.drop(columns=["logcount"])
    ranks = top_contributing_features(df.loc[[5]], top_n=3)
    assert [r["feature"].iloc[0] for r in ranks] == ["logcount", "accessdevicebrowser", "reason"]
    assert ranks[0]["value"].iloc[0] is None
    assert top_contributing_features(df, top_n=10)[-1].shape == (40, 4)  # capped at the feature count


def _images(text: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


def test_report_with_ground_truth(tmp_path):
    out = write_html_report(
        _scores(), tmp_path / "sub" / "report.html", ground_truth=_truth(), top_features=2
    )
    assert out == tmp_path / "sub" / "report.html"
    text = out.read_text(encoding="utf-8")
    images = _images(text)
    assert len(images) == 2 and all(img.startswith(b"\x89PNG") for img in images)
    # self-contained: no scripts, stylesheets or anything fetched over the network
    assert "<script" not in text.lower() and "<link" not in text.lower()
    assert "http://" not in text and "https://" not in text
    # hostile values from data are escaped everywhere
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    assert "&lt;b&gt;invalid_passcode&lt;/b&gt;" in text and "<b>" not in text
    # the detections table: the five rows above the threshold, highest score first, nothing else
    table = text[text.index('<table class="detections">') :]
    table = table[: table.index("</table>")]
    assert re.findall(r"<td>(ev\d{3})</td>", table) == ["ev021", "ev005", "ev010", "ev014", "ev030"]
    rows = table.split("<tr>")[2:]
    assert '<span class="feat">logcount</span> z=15' in rows[0] and "(not in ground truth)" in rows[0]
    assert "DFP-duo-bob:2" in rows[0] and "2022-08-30 12:57:00" in rows[0]
    assert re.findall(r'class="feat">(\w+)<', rows[1]) == ["reason", "logcount"]  # top 2 only
    assert "new_location" in rows[1]
    # evaluation and the per-kind table: 4 of 5 labelled detected (ev999 never scored), 1 FP in 36 normal
    summary = text[text.index("Evaluation against") : text.index("1. Score distribution")]
    assert "<td>precision</td><td>0.8000</td>" in summary
    assert "<td>recall</td><td>0.8000</td>" in summary
    assert "<td>labelled ids never scored</td><td>1</td>" in summary
    assert "Quality bar not met" in summary
    kinds = text[text.index('<table class="per-kind">') :]
    assert "<td>invalid_passcode</td><td>2</td><td>2</td><td>1.0000</td>" in kinds
    assert "<td>odd_hours</td><td>1</td><td>0</td><td>0.0000</td>" in kinds
    assert "<td>rows scored</td><td>40</td>" in text and "<td>users</td><td>4</td>" in text


def test_report_without_ground_truth_and_limited_rows(tmp_path):
    out = write_html_report(
        _scores(), tmp_path / "r.html", threshold=4.0, max_detections_listed=2, title="T<1>"
    )
    text = out.read_text(encoding="utf-8")
    assert len(_images(text)) == 2
    assert "<title>T&lt;1&gt;</title>" in text
    assert "Showing the 2 highest-scoring of 5 detections" in text
    assert "Evaluation against" not in text and "No ground truth given" in text
    assert "ground truth</th>" not in text


def test_report_on_empty_and_quiet_inputs(tmp_path):
    empty = _scores().iloc[0:0]
    text = write_html_report(empty, tmp_path / "empty.html").read_text(encoding="utf-8")
    assert "No rows were scored" in text and "No detections at this threshold" in text
    quiet = write_html_report(_scores(), tmp_path / "quiet.html", threshold=100.0).read_text(encoding="utf-8")
    assert "No detections at this threshold" in quiet and len(_images(quiet)) == 2


# --------------------------------------------------------------------------- CLI


@pytest.fixture()
def files(tmp_path):
    scores, truth = tmp_path / "dfp_scores_duo.csv", tmp_path / "ground_truth.csv"
    _scores().to_csv(scores, index=False)
    _truth().to_csv(truth, index=False)
    return scores, truth


def test_cli_prints_table_and_writes_report(tmp_path, files, capsys):
    scores, truth = files
    out = tmp_path / "report.html"
    rc = main(["report", "--scores", str(scores), "--ground-truth", str(truth), "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "40 rows scored, 5 detections (mean_abs_z > 2)" in printed
    assert any(line.split() == ["precision", "0.8000"] for line in printed.splitlines())
    assert "quality bar: NOT met" in printed and f"report written to {out}" in printed
    text = out.read_text(encoding="utf-8")
    assert len(_images(text)) == 2 and "&lt;script&gt;" in text and "<script" not in text


def test_cli_json_and_quality_bar_exit_codes(tmp_path, files, capsys):
    scores, truth = files
    out = tmp_path / "r.html"
    args = ["report", "--scores", str(scores), "--ground-truth", str(truth), "--out", str(out), "--json"]
    assert main(args) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["report"] == str(out) and payload["rows"] == 40 and payload["detections"] == 5
    ev = payload["evaluation"]
    assert (ev["tp"], ev["fp"], ev["fn"], ev["tn"], ev["missing_ground_truth_ids"]) == (4, 1, 1, 35, 1)
    assert payload["quality_bar"]["met"] is False and len(payload["quality_bar"]["reasons"]) == 3

    assert main(args + ["--fail-below-bar"]) == 1
    capsys.readouterr()
    loose = ["--min-precision", "0.8", "--min-recall", "0.8", "--max-fpr", "0.03"]
    assert main(args + ["--fail-below-bar", *loose]) == 0
    assert json.loads(capsys.readouterr().out)["quality_bar"] == {"met": True, "reasons": []}


def test_cli_errors_are_reported_not_raised(tmp_path, files, capsys):
    scores, _ = files
    assert main(["report", "--scores", str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv does not exist" in capsys.readouterr().err
    assert main(["report", "--scores", str(scores), "--fail-below-bar"]) == 2
    assert "needs --ground-truth" in capsys.readouterr().err
    # without ground truth: report only, no evaluation
    assert main(["report", "--scores", str(tmp_path), "--out", str(tmp_path / "x.html"), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["evaluation"] is None and (tmp_path / "x.html").exists()


def _calibrated_scores() -> pd.DataFrame:
    """The pipeline's calibrated output: per-row thresholds, anomaly_score and explanations
    (here a cyclic hour driver the z-loss columns alone would not show as one feature)."""
    df = _scores()
    df["alert_threshold"] = 3.0
    df["threshold_source"] = np.where(df["username"] == "alice", "own", "population")
    df["anomaly_score"] = df["mean_abs_z"] / 3.0
    detected = df["anomaly_score"] > 1
    for i in (1, 2, 3):
        df[f"driver_{i}"] = np.where(detected, ["hour_of_day", "reason", "logcount"][i - 1], "")
        df[f"driver_{i}_value"] = np.where(detected, ["03:12", "<i>x</i>", "6"][i - 1], "")
        df[f"driver_{i}_expected"] = np.where(detected, ["14:05", "user_approved", "2"][i - 1], "")
        df[f"driver_{i}_z"] = np.where(detected, [21.0, 9.0, 4.0][i - 1], np.nan)
    df["explanation"] = np.where(detected, "hour_of_day=03:12 (expected 14:05, z 21)", "")
    return df


def test_report_defaults_to_the_calibrated_rule_and_shows_the_pipeline_drivers(tmp_path, capsys):
    df = _calibrated_scores()
    path = tmp_path / "dfp_scores_duo.csv"
    df.to_csv(path, index=False)
    assert main(["report", "--scores", str(path), "--out", str(tmp_path / "r.html")]) == 0
    expected = int((df["anomaly_score"] > 1).sum())
    assert f"{expected} detections (anomaly_score > 1)" in capsys.readouterr().out
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "hour_of_day" in text and "03:12" in text and "expected 14:05" in text
    assert "population" in text and "<i>x</i>" not in text and "&lt;i&gt;x&lt;/i&gt;" in text
    # the explanation columns keep their text through the CSV ("6" stays a string, not a number)
    from dfp_ray.tools.evaluation import load_scores

    loaded = load_scores(path)
    assert loaded.loc[df["anomaly_score"] > 1, "driver_3_value"].eq("6").all()
    assert loaded["driver_1_z"].dtype == float


def test_scores_without_event_id_are_numbered(tmp_path, caplog):
    from dfp_ray.tools.evaluation import load_scores

    path = tmp_path / "dfp_scores_x.csv"
    _scores().drop(columns="event_id").to_csv(path, index=False)
    loaded = load_scores(path)
    assert loaded["event_id"].tolist()[:2] == ["row-0", "row-1"]
    assert "no event_id column" in caplog.text


def test_report_shows_which_incident_each_detection_belongs_to(tmp_path, capsys):
    from dfp_ray.pipeline.incidents import IncidentTracker, group_incidents, with_incidents
    from dfp_ray.schemas import load_schema

    df = _calibrated_scores()
    df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True)
    detected = df["anomaly_score"] > 1
    found = group_incidents(df[detected], load_schema("duo"), IncidentTracker.with_gap_hours(24))
    df = with_incidents(df, found)
    n_incidents = found["incident_id"].nunique()
    assert 1 <= n_incidents < int(detected.sum())  # the same user's hour driver within a day groups
    path = tmp_path / "dfp_scores_duo.csv"
    df.to_csv(path, index=False)
    assert main(["report", "--scores", str(path), "--out", str(tmp_path / "r.html")]) == 0
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert f"They form {n_incidents} incidents" in text
    first = found.sort_values("timestamp").iloc[0]
    assert f"#1 of {first['event_id']}" in text
