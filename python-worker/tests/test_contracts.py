"""The worker's side of common/contracts: the shared fixtures, and what the worker writes, against the schemas."""

from __future__ import annotations

import json

import jsonschema
import pytest
from fleetwire_ml.config import load_settings
from fleetwire_ml.worker import EnvelopeCheck


def validator(contracts, name: str) -> jsonschema.Validator:
    schema = contracts.schema(name)
    return jsonschema.validators.validator_for(schema)(schema)


def test_the_shared_ml_infer_fixtures_validate_and_fail_as_on_the_node_side(contracts):
    check = validator(contracts, contracts.ml_request_schema)
    assert check.is_valid(contracts.read("fixtures/valid/ml-infer.json"))
    assert not check.is_valid(contracts.read("fixtures/invalid/ml-infer.json"))


def test_the_worker_refuses_the_invalid_fixture_as_request_invalid(contracts):
    envelope = {"cid": "c", "device_id": "d", "topic_class": "ml-infer", "received_at": 1, "node": "n"}
    check = EnvelopeCheck(contracts)
    check({**envelope, "payload": contracts.read("fixtures/valid/ml-infer.json")})
    with pytest.raises(Exception, match=r"^request_invalid: "):
        check({**envelope, "payload": contracts.read("fixtures/invalid/ml-infer.json")})


async def test_a_worker_result_and_heartbeat_match_their_schemas(start_worker, ml_queue, rdb, contracts):
    worker = start_worker()
    fixture = contracts.read("fixtures/valid/ml-infer.json")
    done = await ml_queue.finished(await ml_queue.add_request("dev-1", fixture))
    late = await ml_queue.finished(await ml_queue.add_request("dev-1", {**fixture, "cid": "late"}, deadline_in_ms=-1))

    result_schema = validator(contracts, "ml-job-result.schema.json")
    result_schema.validate(done.returnvalue)
    result_schema.validate(late.returnvalue)
    assert late.returnvalue["error"]["code"] in contracts.result_errors
    validator(contracts, "ml-worker-heartbeat.schema.json").validate(
        json.loads(await rdb.get(contracts.key("worker", worker_id=worker.id)))
    )


def test_setting_defaults_come_from_ml_json(contracts, models_dir):
    settings = load_settings(contracts, {"REDIS_URL": "redis://127.0.0.1:1", "ML_MODELS_DIR": str(models_dir)})
    defaults = contracts.read("ml.json")["settings"]
    assert settings.heartbeat_ms == defaults["ML_WORKER_HEARTBEAT_MS"]["default"]
    assert settings.lock_ms == defaults["ML_WORKER_LOCK_MS"]["default"]
    assert settings.max_input_rows == defaults["ML_MAX_INPUT_ROWS"]["default"]


def test_queue_prefix_and_attempts_come_from_queues_json(contracts):
    queues = contracts.read("queues.json")
    assert contracts.prefix == queues["prefix"]
    assert contracts.ml_attempts == queues["queues"][contracts.ml_queue]["attempts"]
    assert contracts.key("worker", worker_id="w1") == f"{queues['prefix']}:ml:worker:w1"
