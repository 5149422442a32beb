"""``duet audit`` on hand-written ledgers and queue logs: each rule, and its message."""

import json

import pytest

from cluster.cli import main
from cluster.contract.schema import Group, build_batch
from cluster.queue.log import SegmentLog
from cluster.tools.audit import audit


def ledger(run_dir, *rows):
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "ledger.jsonl", "w") as fh:
        for kind, fields in rows:
            fh.write(json.dumps({"kind": kind, **fields}) + "\n")
    return run_dir


def produced(*ids, step=1):
    return ("produced", {"step": step, "group_ids": list(ids)})


def trained(step, *ids):
    return ("trained", {"step": step, "attempt": "a0", "group_ids": list(ids)})


def dropped(reason, step, *ids):
    return ("dropped", {"reason": reason, "step": step, "group_ids": list(ids)})


FINISHED = ("finished", {"step": 9})


def test_clean_run_passes(tmp_path):
    run = ledger(tmp_path, produced("s0", "s1", "s2"), dropped("tie", 1, "s3"), trained(1, "s0", "s1"),
                 produced("s4", step=2), trained(2, "s2", "s4"), ("pending", {"group_ids": []}),
                 FINISHED)
    report = audit(run)
    assert report.ok, report.text()
    assert (report.produced, report.trained, report.dropped) == (5, 4, {"tie": 1})


def test_group_trained_twice_is_named(tmp_path):
    report = audit(ledger(tmp_path, produced("s0", "s1"), trained(1, "s0", "s1"),
                          trained(2, "s1"), FINISHED))
    assert not report.ok
    assert report.trained_twice == {"s1": [1, 2]}
    assert "group s1 trained twice (steps [1, 2])" in report.text()


def test_rollback_voids_lost_trainings(tmp_path):
    rows = [produced("s0", "s1"), trained(1, "s0"), trained(2, "s1"),
            ("rollback", {"to_step": 1, "regenerate": False}), trained(2, "s1"), FINISHED]
    report = audit(ledger(tmp_path, *rows))
    assert report.ok, report.text()
    assert (report.rollbacks, report.trainings_voided) == (1, 1)


def test_rolled_back_group_never_retrained_is_missing(tmp_path):
    rows = [produced("s0", "s1"), trained(1, "s0"), trained(2, "s1"),
            ("rollback", {"to_step": 1, "regenerate": False}), FINISHED]
    report = audit(ledger(tmp_path, *rows))
    assert report.missing == ["s1"]
    assert "group s1 was produced but never trained, dropped or pending" in report.text()


def test_resume_regenerates_so_later_drops_are_redone(tmp_path):
    rows = [produced("s0", "s1"), trained(1, "s0"), dropped("stale", 2, "s1"),
            ("rollback", {"to_step": 1, "regenerate": True}), produced("s1", step=2),
            trained(2, "s1"), FINISHED]
    report = audit(ledger(tmp_path, *rows))
    assert report.ok, report.text()
    assert report.dropped == {}


def test_dropped_and_trained_is_flagged(tmp_path):
    report = audit(ledger(tmp_path, produced("s0"), dropped("tie", 1, "s0"), trained(1, "s0"),
                          FINISHED))
    assert report.trained_and_dropped == ["s0"] and not report.ok


def test_unfinished_run_fails_and_says_to_resume(tmp_path):
    report = audit(ledger(tmp_path, produced("s0"), trained(1, "s0")))
    assert not report.ok and "--resume" in report.text()


def test_groups_in_the_queue_log_count_as_produced(tmp_path):
    def group(gid):
        return Group(group_id=gid, prompt_id="p", prompt_token_ids=[1], completion_token_ids=[[2], [3]],
                     behaviour_logprobs=[[-0.1], [-0.2]], rewards=[1.0, 0.0],
                     reward_status=["ok", "ok"], finish_reasons=["stop", "stop"], policy_version=0,
                     rollout_worker=0, created_at=0.0, generation_seconds=0.0)

    log = SegmentLog(tmp_path / "queue" / "attempt-0" / "segments")
    log.append(build_batch([group("s0"), group("s1")]), [0, 1])
    log.close()
    report = audit(ledger(tmp_path, trained(1, "s0"), FINISHED))
    assert report.missing == ["s1"]  # in the queue's log, never in the ledger


def test_cli_exit_codes_and_compare_arms(tmp_path, capsys):
    ledger(tmp_path / "cmp" / "arm-2", produced("s0"), trained(1, "s0"), FINISHED)
    ledger(tmp_path / "cmp" / "arm-16", produced("s0"), FINISHED)
    assert main(["audit", str(tmp_path / "cmp")]) == 1
    out = capsys.readouterr().out
    assert "arm-2: OK" in out and "arm-16: FAILED" in out
    assert main(["audit", str(tmp_path / "cmp" / "arm-2")]) == 0
    assert main(["audit", str(tmp_path / "nothing")]) == 2


def test_missing_ledger_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="ledger.jsonl not found"):
        audit(tmp_path)
