"""The quality benchmark's sweep plan (which run comes next, resuming, workers' claims) and its
stages end to end at toy sizes: sweep, resume, extrapolate, throughput, report with plots."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

from quality_sweep import RunKey, active_claims, claim, load_runs, next_run, summary, write_run  # noqa: E402

MODELS = ["gru", "llama"]
GRID = (1e-3, 2e-3, 4e-3, 8e-3)


def run(model, lr, seed, loss):
    return {"model": model, "lr": lr, "seed": seed, "eval_loss": loss}


def grid_runs(model, losses):
    return [run(model, lr, 0, loss) for lr, loss in zip(GRID, losses)]


def settle(runs, curves, seeds=2, max_extend=2, limit=100):
    """Plays the plan to the end with losses from ``curves[model](lr, seed)``."""
    runs = list(runs)
    for _ in range(limit):
        key = next_run(runs, MODELS, GRID, seeds, max_extend)
        if key is None:
            return runs
        runs.append(run(key.model, key.lr, key.seed, curves[key.model](key.lr, key.seed)))
    raise AssertionError("the plan did not settle")


def test_grid_first_with_models_taking_turns():
    runs = []
    order = []
    for _ in range(len(GRID) * len(MODELS)):
        key = next_run(runs, MODELS, GRID)
        order.append((key.model, key.lr, key.seed))
        runs.append(run(key.model, key.lr, key.seed, 1.0))
    assert order[:3] == [("gru", 1e-3, 0), ("llama", 1e-3, 0), ("gru", 2e-3, 0)]
    assert {(m, lr) for m, lr, _ in order} == {(m, lr) for m in MODELS for lr in GRID}


def test_best_at_an_edge_extends_the_range_then_stops_at_max_extend():
    runs = grid_runs("gru", [3.0, 3.1, 3.2, 3.3]) + grid_runs("llama", [3.3, 3.2, 3.1, 3.0])
    assert next_run(runs, MODELS, GRID) == RunKey("gru", 5e-4, 0)
    runs.append(run("gru", 5e-4, 0, 2.9))
    assert next_run(runs, MODELS, GRID) == RunKey("gru", 2.5e-4, 0)
    runs.append(run("gru", 2.5e-4, 0, 2.8))  # still the edge, but max_extend=2 is reached
    assert next_run(runs, MODELS, GRID) == RunKey("llama", 1.6e-2, 0)


def test_settled_sweep_has_every_seed_at_the_best_rate_and_its_neighbours():
    # a parabola in log2(lr) with its minimum at 4e-3 for gru and 1e-3 (an edge) for llama
    import math

    curves = {
        "gru": lambda lr, seed: (math.log2(lr / 4e-3)) ** 2 + 0.01 * seed,
        "llama": lambda lr, seed: (math.log2(lr / 1e-3)) ** 2 + 0.01 * seed,
    }
    runs = settle([], curves)
    gru, llama = summary(runs, "gru"), summary(runs, "llama")
    assert gru["lr"] == pytest.approx(4e-3) and gru["seeds"] == 2
    assert llama["lr"] == pytest.approx(1e-3) and llama["seeds"] == 2
    tried = {(r["model"], round(r["lr"], 8), r["seed"]) for r in runs}
    for lr in (2e-3, 4e-3, 8e-3):
        assert {("gru", lr, 0), ("gru", lr, 1)} <= tried
    assert ("llama", 5e-4, 1) in tried and ("llama", 2e-3, 1) in tried  # neighbours of an edge best
    assert ("gru", 1e-3, 1) not in tried  # not a neighbour: one seed is enough there
    assert gru["spread"] == pytest.approx(0.01)


def test_added_seeds_can_move_the_best_rate():
    # seed 0 favours 2e-3, seed 1 is much worse there: the mean moves the best to 4e-3
    def curve(lr, seed):
        return {1e-3: 3.0, 2e-3: 2.0 + 2.0 * seed, 4e-3: 2.1, 8e-3: 2.5}[round(lr, 6)] if lr >= 1e-3 else 9.0

    runs = settle([], {"gru": curve, "llama": curve}, max_extend=0)
    assert summary(runs, "gru")["lr"] == pytest.approx(4e-3)
    assert any(r["model"] == "gru" and r["lr"] == pytest.approx(8e-3) and r["seed"] == 1 for r in runs)


def test_busy_runs_are_skipped_and_hold_back_their_model():
    busy = frozenset({RunKey("gru", 1e-3, 0)})
    assert next_run([], MODELS, GRID, busy=busy) == RunKey("llama", 1e-3, 0)
    runs = grid_runs("gru", [3.0, 2.9, 2.8, 2.9])[1:] + grid_runs("llama", [3.0, 2.9, 2.8, 2.9])
    # gru's last grid run is in progress: llama goes on, gru's seeds wait for it
    assert next_run(runs, MODELS, GRID, busy=busy).model == "llama"
    both = busy | {RunKey("llama", 9e-3, 0)}
    assert next_run(runs, MODELS, GRID, busy=both) is None


def test_seed_runs_go_on_beside_each_other():
    runs = grid_runs("gru", [3.0, 2.9, 2.8, 2.9])
    # gru's best is 4e-3: its seed 1 there is in progress, the neighbours' seeds need not wait
    busy = frozenset({RunKey("gru", 4e-3, 1)})
    assert next_run(runs, ["gru"], GRID, busy=busy) == RunKey("gru", 2e-3, 1)
    busy |= {RunKey("gru", 2e-3, 1)}
    assert next_run(runs, ["gru"], GRID, busy=busy) == RunKey("gru", 8e-3, 1)
    assert next_run(runs, ["gru"], GRID, busy=busy | {RunKey("gru", 8e-3, 1)}) is None


def test_a_seed_run_in_progress_holds_back_an_extension():
    # the best sits at the top of the tried rates, but a seed there is still running: whether
    # to extend waits for it, and no other seed runs at a best that may move
    runs = grid_runs("gru", [3.0, 2.9, 2.8, 2.7]) + [
        {"model": "gru", "lr": 16e-3, "seed": 0, "eval_loss": 2.6},
        {"model": "gru", "lr": 32e-3, "seed": 0, "eval_loss": 2.65},
        {"model": "gru", "lr": 16e-3, "seed": 1, "eval_loss": 2.75},
    ]
    # mean at 16e-3 is 2.675 > 2.65: the best moved to 32e-3, the last tried rate
    busy = frozenset({RunKey("gru", 32e-3, 1)})
    assert next_run(runs, ["gru"], GRID, max_extend=3, busy=busy) is None
    assert next_run(runs, ["gru"], GRID, max_extend=3) == RunKey("gru", 64e-3, 0)


def test_claims_are_exclusive_and_a_dead_workers_claim_is_dropped(tmp_path):
    key = RunKey("gru", 2e-3, 1)
    mine = claim(tmp_path, key)
    assert mine is not None and claim(tmp_path, key) is None
    assert active_claims(tmp_path) == {key}
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / f"{RunKey('llama', 1e-3, 0).name}.claim").write_text(dead.stdout.strip())
    assert active_claims(tmp_path) == {key}
    assert not (tmp_path / f"{RunKey('llama', 1e-3, 0).name}.claim").exists()


def test_records_round_trip_and_a_broken_one_is_named(tmp_path):
    path = write_run(tmp_path, run("gru", 2e-3, 0, 3.5) | {"params": 10})
    assert path.name == "gru_lr0.002_seed0.json" and not list(tmp_path.glob("*.tmp"))
    assert load_runs(tmp_path)[0]["eval_loss"] == 3.5
    (tmp_path / "llama_lr0.001_seed0.json").write_text('{"model": "llama"')  # a torn write
    with pytest.raises(ValueError, match="llama_lr0.001_seed0.json"):
        load_runs(tmp_path)
    (tmp_path / "llama_lr0.001_seed0.json").write_text('{"model": "llama"}')
    with pytest.raises(ValueError, match="lacks"):
        load_runs(tmp_path)


def test_extrapolate_names_a_missing_checkpoint(tmp_path):
    import bench_quality

    record = run("llama", 1e-3, 0, 3.0) | {"checkpoint": str(tmp_path / "gone")}
    write_run(tmp_path / "runs", record)
    with pytest.raises(SystemExit, match=r"llama's best run's checkpoint .*gone is missing.*llama_lr0.001_seed0.json"):
        bench_quality.main(["extrapolate", "--out", str(tmp_path), "--models", "llama"])


def test_long_blocks_take_one_block_per_long_enough_text():
    from bench_quality import long_blocks

    docs = [list(range(10)), list(range(100, 103)), list(range(200, 208)), list(range(300, 320))]
    assert long_blocks(docs, 8, max_blocks=5).tolist() == [list(range(8)), list(range(200, 208)), list(range(300, 308))]
    assert long_blocks(docs, 8, max_blocks=2).tolist() == [list(range(8)), list(range(200, 208))]
    with pytest.raises(SystemExit, match="no held-out document has 64 tokens"):
        long_blocks(docs, 64, max_blocks=5)


def test_stdlib_tests_are_held_out_from_the_builtin_corpus():
    """The extrapolation reads the standard library's tests; none of them may be training text."""
    from bench_quality import stdlib_test_texts
    from pararnn_hf.data import builtin_corpus

    corpus = builtin_corpus()
    tests = stdlib_test_texts()
    assert len(tests) > 100
    shared = set(tests) & (set(corpus.train) | set(corpus.validation))
    assert all(len(t) < 100 for t in shared), [t[:80] for t in shared]  # only "# Dummy file ..." stubs
    assert stdlib_test_texts()[:5] == tests[:5]  # a fixed order


def test_goals_are_judged_on_the_recorded_numbers():
    from bench_quality import goal_lines

    best = {m: {"mean": v} for m, v in {"pararnn-gru": 4.2, "pararnn-lstm": 3.9, "llama": 4.0, "mamba2": 3.95}.items()}
    extrap = {
        "lengths": [256, 512, 1024],
        "models": {
            "pararnn-gru": {"mean_loss": {"256": 4.1, "512": 4.0, "1024": 3.9}},
            "pararnn-lstm": {"mean_loss": {"256": 3.8, "512": 3.7, "1024": 4.5}},
            "llama": {"mean_loss": {"256": 3.9, "512": 4.1, "1024": 4.4}},
        },
    }
    lines = goal_lines(best, extrap, train_len=256)
    assert "pararnn-gru within 5% of the Llama: yes (1.050x its loss)" in lines  # 5% exactly is within
    assert "pararnn-gru no worse than Mamba2: no (4.2000 vs 3.9500)" in lines
    assert any(line.startswith("pararnn-gru better than the Llama beyond 256 tokens: yes") for line in lines)
    assert "pararnn-lstm no worse than Mamba2: yes (3.9000 vs 3.9500)" in lines
    # the window at the training length itself is not "beyond"; one longer window worse is a no
    assert any(line.startswith("pararnn-lstm better than the Llama beyond 256 tokens: no") for line in lines)
    best["pararnn-gru"]["mean"] = 4.21
    assert "pararnn-gru within 5% of the Llama: no (1.052x its loss)" in goal_lines(best, None, 256)
    assert not any("beyond" in line for line in goal_lines(best, None, 256))


@pytest.mark.once
def test_stages_end_to_end_at_toy_size(tmp_path):
    out, ck = tmp_path / "quality", tmp_path / "ck"
    texts = tmp_path / "texts"
    texts.mkdir()
    words = "the recurrent state carries what the model read so far into the next token".split()
    for i in range(30):  # documents of a few hundred tokens; about 10% held out
        (texts / f"doc{i:02d}.txt").write_text(" ".join(words[(i + j) % len(words)] for j in range(300)))
    common = ["--out", str(out), "--checkpoints", str(ck), "--models", "pararnn-gru", "llama", "--threads", "1"]
    common += ["--corpus", str(texts), "--validation-percent", "10", "--vocab", "300"]
    toy = ["--steps", "2", "--batch", "2", "--seq-len", "32", "--eval-sequences", "2"]

    def bench(*args, last=()):
        proc = subprocess.run(
            [sys.executable, str(BENCH / "bench_quality.py"), *args, *common, *last],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(BENCH)},
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    sweep = ["sweep", *toy, "--lrs", "1e-3", "2e-3", "--max-extend", "0", "--seeds", "1"]
    assert "sweep settled: 4 runs" in bench(*sweep)
    assert "sweep settled: 4 runs" in bench(*sweep)  # resumed: nothing left to run
    bench(*sweep, last=["--models", "llama"])  # a sweep of one model keeps the others in the plan
    assert json.loads((out / "plan.json").read_text())["models"] == ["pararnn-gru", "llama"]
    records = load_runs(out / "runs")
    assert {(r["model"], r["seed"]) for r in records} == {("pararnn-gru", 0), ("llama", 0)}
    assert all(r["recipe"]["adam_beta2"] == 0.95 and r["seq_len"] == 32 for r in records)
    bench("extrapolate", "--lengths", "32", "64")
    extrap = json.loads((out / "extrapolation.json").read_text())
    assert set(extrap["models"]) == {"pararnn-gru", "llama"}
    for e in extrap["models"].values():
        pos, delta = e["position_loss"], e["delta_vs_shortest"]
        assert len(pos) == len(delta) == 64 and pos[0] is None and delta[32] is None
        # the first window of each length sees the same context: the same losses (causal models)
        assert max(abs(d) for d in delta[1:32]) < 1e-3
    again = bench("extrapolate", "--lengths", "32", "64")  # the same checkpoints on the same blocks
    assert "pararnn-gru: kept" in again and "llama: kept" in again
    assert json.loads((out / "extrapolation.json").read_text()) == extrap
    bench("throughput", *toy, "--warmup-steps", "1")
    report = bench("report", "--plot")
    assert "| pararnn-gru | 3.24M |" in report  # the 5m shapes with a 300-token vocabulary
    best_rows = [line for line in report.splitlines() if line.startswith("| llama | 0.00")]
    assert len(best_rows) == 1 and "not measured" not in best_rows[0] and "(1)" in best_rows[0]
    assert "| model | 32 | 64 |" in report and "| pos 1-64 |" in report and "pos 64-256" not in report
    assert "Provisional" not in report  # every planned run is recorded
    assert "- pararnn-gru within 5% of the Llama: " in report
    assert "- pararnn-gru better than the Llama beyond 32 tokens: " in report
    assert (out / "lr_sweep.png").stat().st_size > 1000 and (out / "extrapolation.png").stat().st_size > 1000


def test_mamba2_chunk_size_is_exact():
    """The sweep runs Mamba2 with SSD chunks of 64 for speed; the chunked scan must give the
    model the config's default 256 would. Mamba2's torch path computes its decay and logits in
    float32 whatever the model's dtype, so even in float64 the two agree only to float32
    rounding (3e-7 measured): 1e-5 allows that and still catches a wrong chunk boundary."""
    import torch

    from bench_generate import build
    from bench_quality import MAMBA2_SHAPE

    torch.manual_seed(0)
    model = build("mamba2", "5m", 256, mamba=MAMBA2_SHAPE).double()
    ids = torch.randint(0, model.config.vocab_size, (2, 150))  # 3 chunks of 64, the last one padded
    results = []
    for chunk in (MAMBA2_SHAPE["chunk_size"], 256):
        for layer in model.backbone.layers:
            layer.mixer.chunk_size = chunk
        model.zero_grad()
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        results.append((out.logits.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])))
    (logits, grads), (ref_logits, ref_grads) = results
    assert MAMBA2_SHAPE["chunk_size"] < 150 < 256
    assert ((logits - ref_logits).norm() / ref_logits.norm()).item() < 1e-5
    assert ((grads - ref_grads).norm() / ref_grads.norm()).item() < 1e-5
