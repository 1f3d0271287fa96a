"""Per-user DFP scoring over real HTTP, against real Ray Serve on 127.0.0.1, with models a real
`dfp-ray run` registered in this module (small autoencoders; one Ray session).

One application: bearer token, sources ``duo`` (the run's registry), ``duo_yaml`` (the same
models through a schema YAML file) and ``empty`` (a registry with no model); refresh 1 s; at
most ``HELD`` users per scorer replica.

The key test posts the inference day's raw records in time order, several users per request,
and checks every record's scores against the batch pipeline's for the same record.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from serve_helpers import TOKEN, app_config, free_port, start_apps, train_dfp_registry, wait_for

from dfp_ray.registry import registered_model_name
from dfp_ray.schemas import load_schema

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
TIMEOUT = 60
FEATURES = load_schema("duo").feature_columns  # z-scored columns: Morpheus's seven, application, location, time
DRIVERS = set(FEATURES) | {t.name for t in load_schema("duo").time_features}  # a cyclic pair is one driver
GENERIC = registered_model_name("duo", None)
# The same rows scored in one batch are bit-identical to the pipeline's (checked in-process); scored in
# other batches, float32 matrix kernels round differently: ~1e-5 on z-scores of order 1.
CLOSE = {"rel": 1e-4, "abs": 1e-4}
HELD = 6  # users per scorer replica: more than the data set's, fewer than the tests use in all
MAX_BODY = 2 * 1024**2  # dfp.max_body_bytes of the test app


@pytest.fixture(scope="module")
def registry(ray_session, tmp_path_factory):
    return train_dfp_registry(tmp_path_factory.mktemp("dfp"))


@pytest.fixture(scope="module")
def app(registry, tmp_path_factory):
    from ray import serve

    root = tmp_path_factory.mktemp("serve_dfp")
    state = registry.cfg.state_dir
    schema = yaml.safe_load((Path(__file__).parents[1] / "dfp_ray" / "schemas" / "duo.yaml").read_text())
    schema["name"] = "duo_from_yaml"
    (root / "duo_schema.yaml").write_text(yaml.safe_dump(schema))
    cfg = app_config(root, "dfp", {"auth": {"token": TOKEN}, "dfp": {
        "sources": {"duo": {"pipeline": {"state_dir": state}},
                    "duo_yaml": {"pipeline": {"source": "duo", "state_dir": state},
                                 "schema": str(root / "duo_schema.yaml")},
                    "empty": {"pipeline": {"source": "duo", "state_dir": str(root / "no_models")}}},
        "refresh_s": 1.0, "max_models_per_replica": HELD, "max_body_bytes": MAX_BODY, "max_records_per_request": 500,
        "scorer": {"ray_actor_options": {"num_cpus": 0.5}}}})
    started = start_apps(free_port(), {"dfp": (cfg, "/")})["dfp"]
    yield started
    serve.shutdown()


def score(app, records, source: str = "duo", **kw) -> requests.Response:
    return requests.post(f"{app.url}/dfp/{source}/score", json=records, headers=app.headers, timeout=TIMEOUT, **kw)


def get(app, path: str, **kw) -> requests.Response:
    return requests.get(app.url + path, headers=app.headers, timeout=TIMEOUT, **kw)


def scored(app, records, source: str = "duo") -> list[dict]:
    r = score(app, records, source)
    assert r.status_code == 200, r.text[:500]
    return r.json()["results"]


def on_day(record: dict, user: str, when: float) -> dict:
    """A copy of a Duo record for another user at another time (fresh history, own event id)."""
    rec = copy.deepcopy(record)
    rec["user"]["name"] = user
    rec["timestamp"] = int(when)
    rec["txid"] = f"{user}-{when}"
    return rec


@pytest.fixture(scope="module")
def batch_equal_run(app, registry):
    """The inference day posted in time order, 7 records (several users) per request: before any
    other test posts to the open app, so the histories are exactly the day's records."""
    records = registry.inference_records
    results = []
    for start in range(0, len(records), 7):
        results += scored(app, records[start:start + 7])
    return results


def test_serve_scores_equal_the_batch_pipelines_for_the_same_records(batch_equal_run, registry):
    batch = registry.scores.set_index("event_id")
    detected = set(registry.detections["event_id"])
    assert len(batch_equal_run) == len(registry.inference_records) == len(batch)
    users = {r["user"] for r in batch_equal_run}
    assert len(users) >= 4
    for got in batch_equal_run:
        assert "error" not in got, got
        want = batch.loc[got["event_id"]]
        assert got["user"] == want["username"]
        assert got["model"] == want["model_version"] and got["scored_by"] == want["username"]
        for f in FEATURES:
            assert got["z_scores"][f] == pytest.approx(want[f + "_z_loss"], **CLOSE), (got["event_id"], f)
        assert got["mean_abs_z"] == pytest.approx(want["mean_abs_z"], **CLOSE)
        assert got["max_abs_z"] == pytest.approx(want["max_abs_z"], **CLOSE)
        assert got["counters"] == {"logcount": int(want["logcount"]), "locincrement": int(want["locincrement"])}
        assert got["detection"] is (got["event_id"] in detected)
        assert got["threshold"] == pytest.approx(want["alert_threshold"], **CLOSE) and got["score_column"] == "mean_abs_z"
        assert got["anomaly_score"] == pytest.approx(want["anomaly_score"], **CLOSE)
        tops = got["top_features"]
        assert len(tops) == 3 and [t["z"] for t in tops] == sorted((t["z"] for t in tops), reverse=True)
        assert {t["feature"] for t in tops} <= DRIVERS
        if got["detection"]:  # the pipeline's explanation
            assert [t["feature"] for t in tops] == [want[f"driver_{i}"] for i in (1, 2, 3)]
        else:
            assert tops[0]["z"] == pytest.approx(got["max_abs_z"], **CLOSE)
    assert any(r["detection"] for r in batch_equal_run)  # the day has an injected attack


def test_a_schema_yaml_source_scores_like_the_built_in_one(batch_equal_run, app, registry):
    day2 = registry.inference_records[0]["timestamp"] + 86_400 * 3
    recs = [on_day(registry.inference_records[i], f"yaml-{i}", day2 + i) for i in range(3)]
    a, b = scored(app, recs, "duo_yaml"), scored(app, recs, "duo")
    for x, y in zip(a, b, strict=True):
        assert x["z_scores"] == pytest.approx(y["z_scores"], rel=1e-12) and x["model"] == y["model"] == f"{GENERIC}:1"


def test_one_bad_record_gets_its_own_error_and_the_others_are_scored(batch_equal_run, app, registry):
    good = registry.inference_records[0]
    day = good["timestamp"] + 86_400 * 5
    no_user = on_day(good, "x", day)
    del no_user["user"]
    bad_time = on_day(good, "bad-time", day)
    bad_time["timestamp"] = "not a time"
    list_field = on_day(good, "bad-field", day)
    list_field["access_device"]["browser"] = ["a", "list"]
    body = [on_day(good, "ok-1", day), 42, no_user, bad_time, "text", None, list_field, on_day(good, "ok-2", day + 1)]
    r = score(app, body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert (answer["records"], answer["scored"], answer["errors"]) == (8, 2, 6)
    res = answer["results"]
    assert [x["index"] for x in res] == list(range(8))
    for i in (0, 7):
        assert "error" not in res[i] and set(res[i]["z_scores"]) == set(FEATURES)
    for i in (1, 4, 5):
        assert res[i]["error"]["code"] == "invalid_record" and "not a JSON object" in res[i]["error"]["detail"]
    assert res[2]["error"]["field"] == "user.name" and "username" in res[2]["error"]["detail"]
    assert res[3]["error"]["field"] == "timestamp" and "unparsable" in res[3]["error"]["detail"]
    assert res[6]["error"]["field"] == "access_device.browser" and "wrong type" in res[6]["error"]["detail"]


def test_unknown_source_is_a_404_listing_the_known_ones(app):
    for call in (lambda: score(app, [], "okta"), lambda: get(app, "/dfp/okta/models/alice")):
        r = call()
        assert r.status_code == 404, r.text
        body = r.json()
        assert body["code"] == "unknown_source" and body["field"] == "source"
        assert "['duo', 'duo_yaml', 'empty']" in body["detail"]
    assert get(app, "/dfp").json() == {"sources": ["duo", "duo_yaml", "empty"]}


def test_a_user_without_a_model_is_scored_by_the_generic_one(batch_equal_run, app, registry):
    trained = registry.scores["username"].iloc[0]
    stranger = "stranger.one@corp.example"  # not in the training data; a name that is not registry-safe
    day = registry.inference_records[0]["timestamp"] + 86_400 * 7
    (res,) = scored(app, [on_day(registry.inference_records[0], stranger, day)])
    assert res["model"] == f"{GENERIC}:1" and res["scored_by"] == "generic_user"
    info = get(app, f"/dfp/duo/models/{stranger}").json()
    assert info["model"] == f"{GENERIC}:1" and info["own_model"] is False
    assert info["user_model_name"] == registered_model_name("duo", stranger) and "generic" in info["reason"]
    own = get(app, f"/dfp/duo/models/{trained}").json()
    assert own["own_model"] is True and own["model"] == f"{registered_model_name('duo', trained)}:1"


def test_no_model_at_all_is_a_per_record_error_and_a_404_for_the_model_lookup(app, registry):
    res = scored(app, registry.inference_records[:2], "empty")
    assert all(r["error"]["code"] == "no_model" and GENERIC in r["error"]["detail"] for r in res)
    r = get(app, "/dfp/empty/models/alice")
    assert r.status_code == 404 and r.json()["code"] == "no_model" and "run a training message" in r.json()["detail"]


def test_same_day_history_what_a_request_sees(batch_equal_run, app, registry):
    base = registry.inference_records[0]
    day = (base["timestamp"] // 86_400 + 20) * 86_400  # midnight UTC, 20 days on: no history yet
    u, v = "history-u", "history-v"
    first = scored(app, [on_day(base, u, day + 3600), on_day(base, v, day + 3700)])
    assert [r["counters"]["logcount"] for r in first] == [0, 0]
    moved = on_day(base, u, day + 7200)
    moved["access_device"]["location"]["city"] = "Elsewhere"
    second = scored(app, [on_day(base, u, day + 5400), moved, on_day(base, v, day + 3800)])
    assert [r["counters"] for r in second] == [{"logcount": 1, "locincrement": 1}, {"logcount": 2, "locincrement": 2},
                                               {"logcount": 1, "locincrement": 1}]
    (next_day,) = scored(app, [on_day(base, u, day + 86_400 + 60)])
    assert next_day["counters"] == {"logcount": 0, "locincrement": 1}
    (late,) = scored(app, [on_day(base, u, day + 9000)])  # an earlier day's record after the next day's
    assert late["counters"]["logcount"] == 0  # that day's history was dropped when the next day began
    info = get(app, f"/dfp/duo/models/{u}").json()
    assert info["history_rows"] == 1


def test_a_newer_registered_version_is_picked_up_after_the_refresh_interval(batch_equal_run, app, registry):
    from dfp_ray.pipeline.data_prep import frame_from_records
    from dfp_ray.pipeline.mlflow_model_writer import write_model
    from dfp_ray.pipeline.training import train_model
    from dfp_ray.registry import ModelRegistry
    from dfp_ray.schemas import load_schema

    user = registry.scores["username"].iloc[-1]
    path = f"/dfp/duo/models/{user}"
    assert get(app, path).json()["version"] == "1"
    schema = load_schema("duo")
    rows = []
    for f in sorted((registry.data / "duo" / "training").glob("*.json")):
        rows += [r for r in json.loads(f.read_text()) if r["user"]["name"] == user]
    frame, _ = frame_from_records(rows, schema, derive=False)
    model, report, prepared = train_model(frame, schema, registry.cfg.autoencoder)
    ref = write_model(ModelRegistry.from_config(registry.cfg), source="duo", user=user, model=model, report=report,
                      schema=schema, prepared=prepared)
    assert ref.version == "2"
    registered = time.monotonic()
    wait_for(lambda: get(app, path).json()["version"] == "2", timeout=30, interval=0.3,
             what="the scorer to pick up version 2")
    assert time.monotonic() - registered < 15  # refresh_s is 1 s (a loaded machine is slow, never 15x)
    day = registry.inference_records[0]["timestamp"] + 86_400 * 9
    (res,) = scored(app, [on_day(registry.inference_records[0], user, day)])
    assert res["model"] == f"{registered_model_name('duo', user)}:2"


def test_auth_applies_to_the_scoring_routes(app, registry):
    rec = registry.inference_records[:1]
    for method, path, body in (("post", "/dfp/duo/score", rec), ("get", "/dfp/duo/models/alice", None),
                               ("get", "/dfp/duo/stats", None), ("get", "/dfp", None)):
        call = getattr(requests, method)
        kw = {"json": body} if body is not None else {}
        r = call(app.url + path, timeout=TIMEOUT, **kw)
        assert r.status_code == 401 and r.json()["code"] == "missing_token", (path, r.text)
        r = call(app.url + path, timeout=TIMEOUT, headers={"Authorization": "Bearer wrong"}, **kw)
        assert r.status_code == 403 and r.json()["code"] == "invalid_token", (path, r.text)
        assert call(app.url + path, timeout=TIMEOUT, headers=app.headers, **kw).status_code == 200, path


def test_each_scorer_replica_holds_at_most_max_models_per_replica_users(batch_equal_run, app, registry):
    trained = list(dict.fromkeys(registry.scores["username"]))
    users = [f"bound-{i}" for i in range(HELD)] + trained[:3]  # one user per request: the multiplexer sees each in turn
    day = registry.inference_records[0]["timestamp"] + 86_400 * 11
    loads = []
    for i, user in enumerate(users):
        scored(app, [on_day(registry.inference_records[0], user, day + i)])
        stats = get(app, "/dfp/duo/stats").json()
        assert stats["max_models_per_replica"] == HELD
        assert stats["held_users"] <= stats["held_users_all_sources"] <= HELD
        assert stats["models_loaded"] <= HELD + 1  # users' own models + the generic one
        loads.append(stats["model_loads"])
    assert stats["held_users"] == HELD and loads[-1] > loads[HELD - 1]  # trained users' models were loaded again
    first, last = (get(app, f"/dfp/duo/models/{u}").json() for u in (users[0], users[-1]))
    assert first["history_rows"] == 0  # it was unloaded, with its history, and is held afresh
    assert last["history_rows"] == 1


BAD_BODIES: list[tuple[str, bytes | None, dict]] = [
    ("empty body", b"", {}),
    ("whitespace", b"  \n", {}),
    ("truncated JSON", b"[{", {}),
    ("not JSON", b"hello", {}),
    ("invalid UTF-8", b"[\xff\xfe]", {}),
    ("null", b"null", {}),
    ("number", b"12", {}),
    ("string", b'"x"', {}),
    ("object", b'{"user": {"name": "a"}}', {}),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000, {}),
    ("form data", b"a=1&b=2", {"Content-Type": "application/x-www-form-urlencoded"}),
]


def bad_records(base: dict) -> list[object]:
    day = base["timestamp"] + 86_400 * 13
    variants: list[object] = [[], [[]], [{}], [None, None], [1.5, True, "x"], [{"user": 5}], [{"user": {"name": None}}],
                              [float("nan")], [10**400], [[[[[[1]]]]]]]
    weird = {
        "timestamp": [{"a": 1}, [1, 2], "2022-13-45T99:99:99Z", 1e20, -1e20, 10**30, "", True, None, float("inf")],
        "user": [{"name": ""}, {"name": 12}, {"name": ["a"]}, {"name": {"x": 1}}, {"name": "x" * 20_000},
                 {"name": "a/b:c\nd\x00e"}, {"name": "José ☃ 名前"}, {"name": "  "}, "flat", None],
        "txid": [{"a": 1}, 12, None, ["x"]],
        "result": ["SUCCESS", 1, None, {"x": 1}, "maybe"],
        "access_device": [None, "text", {"location": "not an object"}, {"browser": 7, "os": {"x": 1}}],
        "reason": [None, 3.5, ["a"]],
    }
    for key, values in weird.items():
        for value in values:
            rec = on_day(base, f"weird-{key}", day)
            rec[key] = value
            variants.append([rec])
    mixed = [on_day(base, "mix-a", day), on_day(base, "mix-b", day)]
    mixed[1]["access_device"] = "a string where others have an object"
    variants.append(mixed)
    variants.append([on_day(base, f"many-{i}", day + i) for i in range(40)])  # more users than the LRU of locked
    return variants


def test_no_input_we_know_of_gives_a_500(batch_equal_run, app, registry):
    for name, body, headers in BAD_BODIES:
        r = requests.post(app.url + "/dfp/duo/score", data=body, headers={**app.headers, **headers}, timeout=TIMEOUT)
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text[:300])
        assert {"detail", "field", "code"} <= set(r.json()), (name, r.text[:300])
    for records in bad_records(registry.inference_records[0]):
        r = requests.post(app.url + "/dfp/duo/score", data=json.dumps(records, allow_nan=True), headers=app.headers,
                          timeout=TIMEOUT)
        assert r.status_code == 200, (str(records)[:200], r.status_code, r.text[:300])
        res = r.json()["results"]
        assert len(res) == len(records)
        for one in res:
            assert ("error" in one) != ("z_scores" in one), one
            if "z_scores" in one:
                assert all(v is None or np.isfinite(v) for v in one["z_scores"].values())
    too_many = [registry.inference_records[0]] * (app.cfg.dfp.max_records_per_request + 1)
    r = score(app, too_many)
    assert r.status_code == 413 and "max_records_per_request" in r.json()["detail"]
    assert get(app, "/dfp/duo/score").status_code == 405
    # a JSON body with another content type is read all the same (curl -d sends form encoding)
    r = requests.post(app.url + "/dfp/duo/score", data=b"[]", headers={**app.headers, "Content-Type": "text/plain"},
                      timeout=TIMEOUT)
    assert r.status_code == 200 and r.json()["records"] == 0
    for path in ("/dfp/duo/models/", "/dfp/duo/models/a%2Fb", "/dfp/duo/models/" + "x" * 5000,
                 "/dfp/%00/score", "/dfp/duo/models/%C3%A9%00"):
        r = get(app, path)
        assert r.status_code < 500, (path, r.status_code, r.text[:300])
    padded = b"[" + b" " * (MAX_BODY + 10) + b"]"
    r = requests.post(app.url + "/dfp/duo/score", data=padded, headers=app.headers, timeout=TIMEOUT)
    assert r.status_code == 413 and r.json()["code"] == "too_large" and r.json()["field"] == "body"

    def chunked():  # no Content-Length: counted as it streams
        yield b"["
        for _ in range(MAX_BODY // 65536 + 2):
            yield b" " * 65536
        yield b"]"

    r = requests.post(app.url + "/dfp/duo/score", data=chunked(), headers=app.headers, timeout=TIMEOUT)
    assert r.status_code == 413, r.status_code


def test_the_fast_path_answers_exactly_as_the_pandas_path(registry, tmp_path):
    """Every answer field of the fast path (dfp_ray/serve/dfp_fast.py) equals the pandas path's for
    the same requests, in-process (the library, no Serve): the day in time order, several users
    a request, then out-of-order records, next-day records, unknown values, a user with no model
    of its own, and a request the fast mapper declines (a bad record among good ones)."""
    import asyncio

    from dfp_ray.serve.config import resolved
    from dfp_ray.serve.dfp_fast import MappedRows
    from dfp_ray.serve.dfp_ingress import DfpIngress, LocalBackend

    cfg = app_config(tmp_path, "fast_vs_pandas", {"dfp": {
        "sources": {"duo": {"pipeline": {"state_dir": registry.cfg.state_dir}}}, "refresh_s": 600.0}})
    service = resolved(cfg).dfp
    records = registry.inference_records
    day2 = records[-1]["timestamp"] + 86_400
    odd = [copy.deepcopy(records[0]), copy.deepcopy(records[len(records) // 2])]  # out of order
    odd[1]["access_device"]["browser"] = "NeverSeenBrowser"
    odd[1]["access_device"]["location"]["city"] = "Atlantis"
    odd[1]["application"] = None
    requests_ = [records[i:i + 7] for i in range(0, len(records), 7)] + [
        odd, [on_day(records[i], records[i]["user"]["name"], day2 + i) for i in range(5)],
        [on_day(records[1], "nobody-has-a-model", day2 + 60)],
        [records[2], {"user": "not an object"}, on_day(records[3], records[3]["user"]["name"], day2 + 90)]]

    async def answers(fast: bool) -> list[dict]:
        ingress = DfpIngress(service, LocalBackend(service))
        rt = ingress.runtime("duo")
        rt.use_fast = fast
        taken = [isinstance(rt.map_records(copy.deepcopy(body))[0], MappedRows) for body in requests_]
        assert taken == [fast] * (len(requests_) - 1) + [False]  # the last request goes the pandas way
        return [await ingress.score_request("duo", copy.deepcopy(body)) for body in requests_]

    fast, slow = asyncio.run(answers(True)), asyncio.run(answers(False))
    assert [len(a["results"]) for a in fast] == [len(r) for r in requests_]
    assert any(r.get("detection") for a in fast for r in a["results"])
    assert fast[-2]["results"][0]["model"].startswith(GENERIC + ":")  # the generic model scored it
    for a, b in zip(fast, slow, strict=True):
        assert json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)
