"""`tributary simulate` as a user runs it: a seed replays the same run, a
scenario file with a mistake is refused with a message naming it, and a sweep
prints its summary. (CI also sweeps a few hundred seeds of every scenario:
scripts/test.sh.)"""

import re
import subprocess

from conftest import binary


def simulate(*args, timeout=300):
    return subprocess.run([str(binary()), "simulate", *args], capture_output=True, text=True, timeout=timeout)


def digest(run):
    found = re.search(r"digest ([0-9a-f]{16})", run.stdout)
    assert found, run.stdout + run.stderr
    return found.group(1)


def test_the_same_seed_replays_the_same_run():
    first = simulate("mixed-faults", "--seed", "42")
    again = simulate("mixed-faults", "--seed", "42")
    other = simulate("mixed-faults", "--seed", "43")
    assert first.returncode == 0, first.stdout + first.stderr
    assert digest(first) == digest(again), "one seed, two different runs"
    assert digest(first) != digest(other), "two seeds, one run"


def test_a_sweep_prints_a_summary_and_checks_every_seed():
    run = simulate("leader-partition", "--seeds", "6", "--first-seed", "100")
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"seeds run\s+6", run.stdout), run.stdout
    assert re.search(r"passed\s+6", run.stdout), run.stdout
    acked = int(re.search(r"records acknowledged and checked\s+(\d+)", run.stdout).group(1))
    assert acked > 1000, f"the workload acknowledged only {acked} records"


def test_scenario_mistakes_are_named(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\nduration_s = 10\n[faults]\nkinds = ["meteor-strike"]\n')
    run = simulate(str(bad))
    assert run.returncode != 0
    assert "meteor-strike" in run.stderr, run.stderr
    missing = simulate("no-such-scenario")
    assert missing.returncode != 0 and "no-such-scenario" in missing.stderr, missing.stderr


def test_a_transactional_run_replays_and_checks_transactions():
    """The transactions scenario: transactional producers and a
    consume-transform-produce copier under faults. A seed replays its run,
    and the summary counts the transactional records it checked."""
    first = simulate("transactions", "--seed", "11")
    again = simulate("transactions", "--seed", "11")
    assert first.returncode == 0, first.stdout + first.stderr
    assert digest(first) == digest(again), "one seed, two different runs"
    acked = int(re.search(r"records acknowledged and checked\s+(\d+)", first.stdout).group(1))
    assert acked > 1000, f"the workload acknowledged only {acked} records"


def test_turning_off_partition_verification_is_caught():
    """The mutation check: with KIP-890's verification off
    (transactions.partition_verification = false in the scenario's
    broker_config), some seed of 200 must fail."""
    run = simulate("simulations/mutations/transactions-unverified.toml", "--seeds", "200", timeout=900)
    assert run.returncode != 0, "200 seeds without partition verification all passed:\n" + run.stdout[-3000:]
    failed = int(re.search(r"failed\s+(\d+)", run.stdout).group(1))
    assert failed >= 1 and "harness failed" not in run.stdout, run.stdout[-3000:]


def test_a_scenario_broker_config_is_checked_as_a_broker_checks_its_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\nduration_s = 5\n[broker_config.transactions]\npartition_verifications = false\n')
    run = simulate(str(bad))
    assert run.returncode != 0
    assert "partition_verifications" in run.stdout + run.stderr, run.stdout + run.stderr
