"""scripts/recipes.py runs the protocol end to end on the smoke model and a toy corpus: the choice
is made on valid, test is scored once with it, the table reports it, and a finished run is not
trained again; the seeds' ensemble is chosen and scored the same way."""

import json
import subprocess
import sys


def test_recipes_chooses_on_valid_scores_test_once_and_does_not_retrain(
    repo_root, make_corpus, tmp_path
):
    # toy train/val/test_2016_flickr pairs, read as plain files
    runs, corpus = tmp_path / "runs", make_corpus()
    cmd = [
        sys.executable,
        str(repo_root / "scripts" / "recipes.py"),
        "--config",
        str(repo_root / "configs" / "smoke.yaml"),
        "--source",
        str(corpus),
        "--set",
        f"data.prepared_dir={tmp_path / 'prepared'}",
        "--set",
        "data.corpus=files",
        "--set",
        f"data.source={corpus}",
        "--set",
        "data.vocab_size=60",
        "--set",
        "train.save_every=20",
        "--set",
        "train.valid_every=20",
        "--steps",
        "40",
        "--seeds",
        "2",
        "--average",
        "2",
        "--ensemble",
        "--beam",
        "1,2",
        "--alpha",
        "0.6",
        "--runs",
        str(runs),
        "--json",
        str(tmp_path / "rows.json"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [(r["recipe"], r["seed"]) for r in rows] == [
        ("smoke", 1),
        ("smoke", 2),
        ("smoke ensemble", "1+2"),
    ]
    rows, ensemble = rows[:2], rows[2]

    for r in rows:
        run = runs / f"smoke-seed{r['seed']}"
        # the choice is the best (candidate, beam, alpha) over every valid sweep, and test was
        # decoded with it
        sweeps = {f.name: json.loads(f.read_text()) for f in run.glob("valid.sweep.*.json")}
        assert set(sweeps) == {"valid.sweep.best.json", "valid.sweep.average-last-2.json"}
        best_valid = max(s["best"]["bleu"] for s in sweeps.values())
        scored = json.loads((run / "test.json").read_text())
        chosen = scored["chosen_on_valid"]
        assert chosen["valid_bleu"] == best_valid == r["valid_bleu"]
        assert scored["test"]["checkpoint"] == str(run / chosen["checkpoint"])
        assert (
            scored["test"]["beam"] == chosen["beam"] and scored["test"]["alpha"] == chosen["alpha"]
        )
        assert r["bleu"] == scored["test"]["metrics"]["bleu"]["score"]
        # smoke.yaml is en->de: the target goes by direction, not by the config's name
        assert r["target"] == 40.0
        # the curve is the run's validations: [training minutes, valid BLEU] at steps 20 and 40
        logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert r["curve"] == [
            [v["time"] / 60, v["valid_bleu"]] for v in logged if "valid_bleu" in v
        ]
        assert len(r["curve"]) == 2 and r["steps"] == 40
    # the ensemble: each seed's chosen checkpoint, beam and alpha chosen on valid for it, test
    # decoded once with them
    scored = json.loads((runs / "smoke-ensemble2" / "test.json").read_text())
    members = [str(runs / f"smoke-seed{r['seed']}" / r["checkpoint"]) for r in rows]
    swept = json.loads((runs / "smoke-ensemble2" / "valid.sweep.json").read_text())
    assert (
        scored["members"]
        == members
        == scored["test"]["ensemble"]
        == swept["ensemble"]
        == ensemble["members"]
    )
    assert (
        ensemble["valid_bleu"] == swept["best"]["bleu"]
        and ensemble["beam"] == scored["test"]["beam"] == swept["best"]["beam"]
    )
    assert (
        ensemble["bleu"] == scored["test"]["metrics"]["bleu"]["score"] and ensemble["steps"] == 80
    )
    assert "| smoke ensemble | 1+2 |" in done.stdout
    assert "smoke, 2 seeds: test BLEU mean" in done.stdout
    assert "smoke seed 2: " in done.stdout and " min " in done.stdout

    # a finished run is neither trained nor decoded again: nothing in its folder changes
    # runs/: prepare's logs
    before = {f: f.stat().st_mtime_ns for f in runs.rglob("*") if f.is_file() and f.parent != runs}
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert {f: f.stat().st_mtime_ns for f in before} == before
    assert again.stdout.split("| recipe")[1] == done.stdout.split("| recipe")[1]

    # --seed picks seeds instead of 1..N (seed 3 added beside finished seeds 1-2): here only seed
    # 2's finished row
    only = [a for a in cmd if a != "--ensemble"] + ["--only-table"]
    only[only.index("--seeds")], only[only.index("--json") + 1] = (
        "--seed",
        str(tmp_path / "seed2.json"),
    )
    picked = subprocess.run(only, capture_output=True, text=True, timeout=600)
    assert picked.returncode == 0, picked.stderr[-2000:]
    assert json.loads((tmp_path / "seed2.json").read_text()) == [
        r for r in json.loads((tmp_path / "rows.json").read_text()) if r["seed"] == 2
    ]
