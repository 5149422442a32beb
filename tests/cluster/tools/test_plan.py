"""`duet plan`: the cost model's arithmetic, measured costs from a run, and the paper check."""

import json

import pytest

from cluster.cli import main
from cluster.contract.config import load_config
from cluster.tools.plan import Costs, measured_costs, paper_implied, project


def test_paper_totals_imply_step_cost_and_fixed_hours():
    implied = paper_implied()  # 2.05 h / 293 steps vs 8.53 h / 2344 steps
    assert implied["step_s"] == pytest.approx((8.53 - 2.05) * 3600 / 2051)
    assert implied["fixed_hours"] == pytest.approx(2.05 - 293 * implied["step_s"] / 3600)


def test_projection_adds_generation_training_fixed_and_evaluation():
    config = load_config(None, ["algo.prompts_per_step=4", "algo.group_size=16",
                                "rollout.num_workers=2", "learner.num_ranks=4"])
    costs = Costs(gen_s_per_token=0.001, train_s_per_token=0.002, step_fixed_s=0.5, source="t")
    p = project(config, costs, response_tokens=10, dataset_size=40, epochs=2, evals=3,
                eval_prompts=5, eval_k=4)
    assert p.steps == 20  # 80 prompts seen at 4 per step
    assert p.generate_s == pytest.approx(64 * 10 * 0.001 / 2)
    assert p.train_s == pytest.approx(64 * 10 * 0.002 / 4)
    assert p.eval_s == pytest.approx(3 * 5 * 4 * 10 * 0.001 / 2)
    assert p.hours * 3600 == pytest.approx(20 * (0.32 + 0.32 + 0.5) + 0.3)


def test_measured_costs_come_from_the_metrics_log(tmp_path):
    (tmp_path / "config.yaml").write_text(
        "rollout:\n  num_workers: 2\nlearner:\n  num_ranks: 1\nmodel:\n  path: x\n")
    rows = [{"kind": "step", "step": i, "completion_tokens": 100.0, "generate_s": 0.5,
             "learner_seconds": 0.2, "step_s": 1.0} for i in range(1, 5)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    costs = measured_costs(tmp_path)
    assert costs.gen_s_per_token == pytest.approx(0.5 * 2 / 100)
    assert costs.train_s_per_token == pytest.approx(0.2 / 100)
    assert costs.step_fixed_s == pytest.approx(0.3)


def test_plan_cli_compares_with_the_paper(capsys):
    assert main(["plan"]) == 0
    out = capsys.readouterr().out
    assert "| 1.5b-g2 (G=2) | 4 | 293 |" in out and "| 1.5b-g16 (G=16) | 4 | 2344 |" in out
    assert "projected 2-GRPO / 16-GRPO time" in out and "2.05 h vs 8.53 h = 24.0%" in out


def test_plan_takes_a_measured_training_utilisation_and_refuses_nonsense(capsys):
    assert main(["plan", "--train-mfu", "0.7"]) == 0
    out = capsys.readouterr().out
    assert "training at 70% of 989 TFLOP/s" in out
    # Twice the utilisation halves the training term: 6.58 s per step at 35% -> 3.29 s.
    assert "(4.26 + 3.29 + 1)" in out
    with pytest.raises(SystemExit, match=r"--train-mfu is a fraction of peak FLOP/s.*got 1.5"):
        main(["plan", "--train-mfu", "1.5"])
