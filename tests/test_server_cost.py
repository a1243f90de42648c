"""The server's own cost in the sim: --servers S shards, --server-update-time and --server-answer-time."""

from pathlib import Path

import pytest
import torch

from softsync import train

from helpers import fails_with_one_line, final_weights

COMMON = dict(dataset="synthetic", quiet=True, model="mlp", batch_size=16, seed=2, epochs=1, step_jitter=0.2)


def run(tmp_path, name, synthetic, **options):
    out = tmp_path / name
    return out, train(data=synthetic, out=str(out), **{**COMMON, **options})


def test_s_shards_are_one_server_with_s_times_the_link_and_the_processor(tmp_path, synthetic):
    costs = dict(protocol="async", learners=6, message_bytes=4_000_000, step_time=0.01)
    sharded, sharded_summary = run(
        tmp_path,
        "sharded",
        synthetic,
        servers=4,
        bandwidth=1e9,
        server_answer_time=4e-9,
        server_update_time=8e-9,
        **costs,
    )
    single, single_summary = run(
        tmp_path,
        "single",
        synthetic,
        servers=1,
        bandwidth=4e9,
        server_answer_time=1e-9,
        server_update_time=2e-9,
        **costs,
    )
    assert sharded_summary["virtual_s"] == single_summary["virtual_s"]
    assert torch.equal(final_weights(sharded), final_weights(single))


def test_hardsync_computes_the_same_whatever_the_shards_and_costs(tmp_path, synthetic):
    one, _ = run(tmp_path, "one", synthetic, protocol="hardsync", learners=4)
    free, free_summary = run(tmp_path, "free", synthetic, protocol="hardsync", learners=4, servers=8)
    busy, busy_summary = run(
        tmp_path, "busy", synthetic, protocol="hardsync", learners=4, servers=8, server_update_time=1e-6
    )
    for other in (free, busy):
        difference = (final_weights(one) - final_weights(other)).abs().max().item()
        assert difference < 1e-5, difference  # the order a round's gradients arrive in: float summation only
    assert busy_summary["virtual_s"] > free_summary["virtual_s"]  # the updates take the server's time


@pytest.mark.parametrize("servers", [1, 2])
def test_a_busy_server_bounds_throughput_and_shards_lift_the_bound(tmp_path, synthetic, servers):
    # answering a pull takes 1e-8 s × 1M parameters / S = 10 ms / S; a gradient takes 1 ms: the server is the bottleneck
    options = dict(protocol="async", learners=8, step_time=0.001, step_jitter=0.0, message_bytes=4_000_000)
    _, summary = run(
        tmp_path,
        f"s{servers}",
        synthetic,
        servers=servers,
        bandwidth=1e15,
        latency=0.0,
        server_answer_time=1e-8,
        **options,
    )
    bound = 16 / (0.01 / servers)  # μ samples per answer
    assert 0.95 * bound < summary["samples_per_s"] <= bound * 1.0001


def test_zero_costs_change_nothing(tmp_path, synthetic):
    plain, plain_summary = run(tmp_path, "plain", synthetic, protocol="2-softsync", learners=4)
    zero, zero_summary = run(
        tmp_path, "zero", synthetic, protocol="2-softsync", learners=4, server_update_time=0.0, server_answer_time=0.0
    )
    assert plain_summary["virtual_s"] == zero_summary["virtual_s"]
    assert torch.equal(final_weights(plain), final_weights(zero))


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--servers", "0"], "--servers 0"),
        (["--servers", "2", "--engine", "dist"], "one server process"),
        (["--server-update-time", "-1"], "--server-update-time"),
        (["--server-answer-time", "x"], "--server-answer-time"),
    ],
)
def test_bad_values_exit_2_with_one_line(tmp_path, capsys, flags, words):
    line = fails_with_one_line(["train", "--dataset", "synthetic", "--out", str(tmp_path / "run"), *flags], capsys)
    assert words in line
    assert not (tmp_path / "run").exists()


@pytest.mark.dist
def test_server_threads_go_to_the_server_process_only(tmp_path):
    from test_dist import start

    process, processes = start(tmp_path / "run", *"--learners 2 --epochs 20 --server-threads 2".split())
    try:
        threads = {}
        for entry in processes:
            environment = Path(f"/proc/{entry['pid']}/environ").read_bytes().split(b"\0")
            threads[entry["rank"]] = next(v for v in environment if v.startswith(b"OMP_NUM_THREADS=")).split(b"=")[1]
        assert threads == {0: b"2", 1: b"1", 2: b"1"}
    finally:
        _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
