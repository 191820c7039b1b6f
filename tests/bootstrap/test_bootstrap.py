"""Posterior bootstrap: weights, replicates, store, resume, executors, aggregation."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from petuq_sirf.bootstrap import (
    BootstrapConfig,
    BootstrapProblem,
    DaskExecutor,
    InProcessExecutor,
    ReplicateStore,
    RunningMoments,
    check_weights,
    draw_weights,
    make_executor,
    replicate_draws,
    replicate_rng,
    run_bootstrap,
    run_replicate,
    store_quantiles,
    summarise_store,
    weighted_data,
)
from petuq_sirf.io import ListModeEvents
from petuq_sirf.io.acquisition_folder import Acquisition
from petuq_sirf.recon import RelativeDifferencePrior, map_rdp, osem
from petuq_sirf.scanner import ImageGeometry
from petuq_sirf.simulation import nema_iec_phantom, simulate
from petuq_sirf.simulation.simulate import SimulationConfig


@pytest.fixture(scope="module")
def acquisition_2d(layout_2d, image_2d) -> Acquisition:
    sim = simulate(nema_iec_phantom(image_2d), layout_2d, SimulationConfig(true_counts=1e5, seed=3, listmode=True))
    return sim.to_acquisition()


@pytest.fixture
def problem(acquisition_2d) -> BootstrapProblem:
    return BootstrapProblem.from_acquisition(acquisition_2d)


FAST = BootstrapConfig(num_replicates=6, num_iterations=3, full_data_iterations=5, seed=11)


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- weights
def test_weights_depend_only_on_seed_and_index():
    a = draw_weights(1000, "exp", replicate_rng(5, 3))
    b = draw_weights(1000, "exp", replicate_rng(5, 3))
    c = draw_weights(1000, "exp", replicate_rng(5, 4))
    d = draw_weights(1000, "exp", np.random.default_rng(np.random.SeedSequence(5).spawn(5)[3]))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, d)  # the same stream as SeedSequence.spawn
    assert not np.array_equal(a, c)
    p = draw_weights(1000, "poisson", replicate_rng(5, 3))
    assert np.array_equal(p, np.round(p)) and p.min() >= 0


@pytest.mark.parametrize("kind", ["poisson", "exp"])
def test_bootstrap_variance_of_total_count(kind):
    """Sum of N i.i.d. weights with variance 1 has variance N: the Poisson count variance of the total."""
    n, reps = 20_000, 400
    totals = np.array([draw_weights(n, kind, replicate_rng(0, b)).sum() for b in range(reps)])
    rel_se = np.sqrt(2.0 / (reps - 1))  # standard error of a sample variance, relative
    assert abs(totals.var(ddof=1) / n - 1) < 4 * rel_se
    assert abs(totals.mean() - n) < 4 * np.sqrt(n / reps)


def test_poisson_weighted_sinogram_has_poisson_moments(problem):
    """Per bin, the classical bootstrap count has mean and variance equal to the observed count."""
    cfg = BootstrapConfig(weights="poisson", seed=1)
    y = problem.listmode.histogram().numpy().ravel()
    sinos = np.stack(
        [weighted_data(problem, replicate_draws(problem, cfg, b)[0])[0].numpy().ravel() for b in range(200)]
    )
    n_prompts = problem.listmode.num_prompts
    total = sinos.sum(1)
    assert abs(total.var(ddof=1) / n_prompts - 1) < 4 * np.sqrt(2 / 199)
    busy = y >= 20
    np.testing.assert_allclose(sinos[:, busy].mean(0).mean() / y[busy].mean(), 1, atol=0.01)
    ratio = sinos[:, busy].var(0, ddof=1).sum() / y[busy].sum()
    assert abs(ratio - 1) < 0.05


def test_clear_errors_for_bad_events_and_weights(problem, layout_2d, image_2d):
    with pytest.raises(ValueError, match="finite"):
        check_weights(np.array([1.0, np.nan, 2.0]), 3)
    with pytest.raises(ValueError, match="finite"):
        weighted_data(problem, np.full(len(problem.listmode), np.inf))
    with pytest.raises(ValueError, match="2 bootstrap weights given for 3"):
        check_weights(np.ones(2), 3)
    with pytest.raises(ValueError, match="empty"):
        draw_weights(0, "exp", replicate_rng(0, 0))
    with pytest.raises(ValueError, match="unknown weight kind"):
        BootstrapConfig(weights="gamma")
    lm = problem.listmode
    wrong = ListModeEvents(lm.bins % 100, lm.times_ms, lm.prompt, (1, 10, 10))
    with pytest.raises(ValueError, match="does not match the scanner"):
        BootstrapProblem(layout_2d, image_2d, problem.multiplicative, problem.additive, wrong, problem.prior)
    empty = ListModeEvents(np.zeros(0, np.int64), np.zeros(0), np.zeros(0, bool), layout_2d.shape)
    with pytest.raises(ValueError, match="no prompt events"):
        BootstrapProblem(layout_2d, image_2d, problem.multiplicative, problem.additive, empty, problem.prior)
    with pytest.raises(ValueError, match="unknown scheduler"):
        make_executor("slurm")


# ----------------------------------------------------------------------------- aggregation
def test_running_moments_match_numpy():
    rng = np.random.default_rng(0)
    xs = rng.normal(3.0, 2.0, size=(50, 2, 3, 4))
    m = RunningMoments()
    for x in xs:
        m.update(x)
    np.testing.assert_allclose(m.mean, xs.mean(0), rtol=1e-12)
    np.testing.assert_allclose(m.variance(), xs.var(0, ddof=1), rtol=1e-10)
    with pytest.raises(ValueError, match="non-finite"):
        m.update(np.full((2, 3, 4), np.nan))


# ----------------------------------------------------------------------------- store, resume, executors
def test_kill_and_resume_gives_exactly_b_replicates_first_k_untouched(problem, acquisition_2d, tmp_path):
    k = 3

    class Interrupt(KeyboardInterrupt):
        pass

    def stop_after_k(result):
        if result.index == k - 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_bootstrap(problem, FAST, tmp_path / "run", progress=False, on_replicate=stop_after_k)
    store = ReplicateStore.existing(tmp_path / "run")
    assert store.completed() == list(range(k))
    before = {b: (store.image_path(b).stat().st_mtime_ns, _digest(store.image_path(b))) for b in range(k)}
    (store.replicate_dir / ".rep_000003.npy.abc.tmp").write_bytes(b"half-written")  # a torn write
    # resume with a fresh problem object, as a new process would
    fresh = BootstrapProblem.from_acquisition(acquisition_2d)
    run_bootstrap(fresh, FAST, tmp_path / "run", progress=False)
    assert store.completed() == list(range(FAST.num_replicates))
    assert not list(store.replicate_dir.glob(".*.tmp"))
    for b in range(k):
        assert (store.image_path(b).stat().st_mtime_ns, _digest(store.image_path(b))) == before[b]
    # the resumed run is identical to an uninterrupted one
    ref = run_bootstrap(BootstrapProblem.from_acquisition(acquisition_2d), FAST, tmp_path / "ref", progress=False)
    for b in range(FAST.num_replicates):
        assert _digest(ref.image_path(b)) == _digest(store.image_path(b))
    assert store.manifest()["completed"] == FAST.num_replicates
    # a different configuration may not be mixed into the same store
    with pytest.raises(ValueError, match="different settings"):
        run_bootstrap(problem, BootstrapConfig(num_replicates=6, num_iterations=4), tmp_path / "run", progress=False)


def test_same_seed_same_replicate_in_process_and_on_dask(problem, tmp_path):
    cfg = BootstrapConfig(num_replicates=4, num_iterations=3, full_data_iterations=5, seed=7)
    local = run_bootstrap(problem, cfg, tmp_path / "local", executor=InProcessExecutor(), progress=False)
    with DaskExecutor(num_workers=2, threads_per_worker=1, processes=False) as ex:
        assert ex.num_workers == 2
        dist = run_bootstrap(problem, cfg, tmp_path / "dask", executor=ex, progress=False)
    assert dist.completed() == list(range(4))
    for b in range(4):
        np.testing.assert_array_equal(local.load(b), dist.load(b))
    # and a single replicate recomputed alone, out of order, is the same again
    np.testing.assert_array_equal(run_replicate(problem, cfg, 2).image, local.load(2))
    assert not np.array_equal(local.load(0), local.load(1))


def test_a_failed_replicate_is_retried_in_process_and_on_dask(problem, tmp_path, monkeypatch):
    import petuq_sirf.bootstrap.executors as executors

    real, calls = executors.run_replicate, {}

    def flaky(p, c, b):
        calls[b] = calls.get(b, 0) + 1
        if b == 1 and calls[b] == 1:
            raise RuntimeError("worker lost")
        return real(p, c, b)

    monkeypatch.setattr(executors, "run_replicate", flaky)
    cfg = BootstrapConfig(num_replicates=3, num_iterations=2, full_data_iterations=3)
    store = run_bootstrap(problem, cfg, tmp_path / "a", progress=False)
    assert store.completed() == [0, 1, 2] and calls == {0: 1, 1: 2, 2: 1}
    calls.clear()
    with DaskExecutor(num_workers=1, processes=False, retries=1) as ex:
        store = run_bootstrap(problem, cfg, tmp_path / "b", executor=ex, progress=False)
    assert store.completed() == [0, 1, 2] and calls == {0: 1, 1: 2, 2: 1}

    def broken(p, c, b):
        raise RuntimeError("always fails")

    monkeypatch.setattr(executors, "run_replicate", broken)
    with pytest.raises(RuntimeError, match="always fails"):
        run_bootstrap(
            problem,
            BootstrapConfig(num_replicates=4, num_iterations=2, full_data_iterations=3),
            tmp_path / "a",
            progress=False,
        )
    assert ReplicateStore.existing(tmp_path / "a").completed() == [0, 1, 2]  # nothing lost


@pytest.mark.slow
def test_same_replicates_on_process_pool_and_dask_processes(problem, tmp_path):
    from petuq_sirf.bootstrap import ProcessPoolExecutor

    cfg = BootstrapConfig(num_replicates=4, num_iterations=3, full_data_iterations=5, seed=7)
    local = run_bootstrap(problem, cfg, tmp_path / "local", progress=False)
    pool = run_bootstrap(problem, cfg, tmp_path / "pool", executor=ProcessPoolExecutor(2), progress=False)
    with DaskExecutor(num_workers=2, processes=True) as ex:
        dist = run_bootstrap(problem, cfg, tmp_path / "dask", executor=ex, progress=False)
    for b in range(4):
        np.testing.assert_array_equal(local.load(b), pool.load(b))
        np.testing.assert_array_equal(local.load(b), dist.load(b))


def test_summary_streams_and_quantiles_are_those_of_the_replicates(problem, acquisition_2d, tmp_path):
    store = run_bootstrap(problem, FAST, tmp_path, progress=False)
    stack = np.stack([store.load(b) for b in range(FAST.num_replicates)]).astype(np.float64)
    regions = {k: v.numpy() for k, v in acquisition_2d.regions.items()}
    s = summarise_store(store, levels=(0.5, 0.9), regions=regions, truth=acquisition_2d.truth.numpy(), chunk_voxels=777)
    assert s.count == FAST.num_replicates
    np.testing.assert_allclose(s.mean, stack.mean(0), rtol=1e-6)
    np.testing.assert_allclose(s.std, stack.std(0, ddof=1), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(s.intervals[0.9][0], np.quantile(stack, 0.05, axis=0), rtol=1e-6)
    np.testing.assert_allclose(s.median, np.median(stack, axis=0), rtol=1e-6)
    np.testing.assert_allclose(store_quantiles(store, [1.0]), stack.max(0)[None], rtol=1e-6)
    roi = s.roi["background"]
    bg = [stack[b][regions["background"]].mean() for b in range(FAST.num_replicates)]
    assert roi["mean"] == pytest.approx(np.mean(bg)) and roi["std"] == pytest.approx(np.std(bg, ddof=1))
    assert "inside_0.90" in roi and roi["interval_0.90"][0] <= roi["interval_0.90"][1]
    info = store.info(0)
    assert info["prior_factor"] > 0 and info["expected_scale"] == pytest.approx(
        info["sum_prompt_weights"] / problem.listmode.num_prompts
    )


# ----------------------------------------------------------------------------- validation
def _std_ratio(layout, image, realisations: int, replicates: int, counts: float, iterations: int) -> float:
    """Mean bootstrap std / mean empirical std of MAP estimates over independent realisations (body mask).

    Realisation ``m`` is reconstructed exactly like the full-data estimate of a bootstrap run
    (2 OSEM iterations, then ``2 * iterations`` MAP-RDP iterations); replicates run ``iterations``
    warm-started MAP iterations with a fixed prior (``prior_cv = 0``).
    """
    phantom = nema_iec_phantom(image)
    cfg = BootstrapConfig(
        num_replicates=replicates, num_iterations=iterations, full_data_iterations=2 * iterations, prior_cv=0.0, seed=2
    )
    sim0 = simulate(phantom, layout, SimulationConfig(true_counts=counts, seed=0, listmode=True))
    model = sim0.acquisition_model()
    maps = []
    for m in range(realisations):
        sim = simulate(phantom, layout, SimulationConfig(true_counts=counts, seed=100 + m), model=model)
        m_model = model.with_terms(sim.multiplicative, sim.additive)
        init = osem(m_model, sim.prompts, 2, 8).image
        prior = RelativeDifferencePrior.scaled_for(m_model.sensitivity(), init, strength=cfg.prior_strength)
        maps.append(map_rdp(m_model, sim.prompts, prior, cfg.full_data_iterations, x0=init).image.numpy())
    prob = BootstrapProblem.from_acquisition(sim0.to_acquisition())
    prob._model = model  # share the projector
    prob.prepare(cfg)
    reps = np.stack([run_replicate(prob, cfg, b).image for b in range(replicates)])
    body = phantom.activity.numpy() > 0
    return float(reps.std(0, ddof=1)[body].mean() / np.stack(maps).std(0, ddof=1)[body].mean())


def test_bootstrap_std_matches_spread_of_map_over_realisations(layout_2d):
    """High counts, 20 independent realisations: bootstrap std within 25 % of the empirical MAP std.

    On a coarse 32 x 32 grid (7.6 mm voxels) to keep it cheap; the slow variant uses the 64 x 64 grid.
    """
    image = ImageGeometry.for_layout(layout_2d, 32, 7.6)
    ratio = _std_ratio(layout_2d, image, realisations=20, replicates=24, counts=1e6, iterations=30)
    assert 0.75 < ratio < 1.25, ratio


@pytest.mark.slow
def test_bootstrap_std_matches_spread_of_map_converged(layout_2d, image_2d):
    """The same with better converged replicates (60 iterations), 30 realisations, 40 replicates."""
    ratio = _std_ratio(layout_2d, image_2d, realisations=30, replicates=40, counts=1e6, iterations=60)
    assert 0.85 < ratio < 1.15, ratio
