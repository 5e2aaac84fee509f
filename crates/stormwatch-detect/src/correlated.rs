//! `correlated_storm`: the PCA subspace method (Lakhina et al., SIGCOMM 2004) over the matrix
//! of per-window edge rates.
//!
//! Normal traffic moves edges together: a busier entry point raises all its downstream edges
//! in proportion. A principal component analysis of past windows (rows) by edges (columns,
//! calls per entry request, standardised) learns those joint movements; the first components
//! that explain `variance_kept` of the variance span the *normal subspace*. A window is
//! projected onto it and the squared residual (SPE) is compared with a threshold at confidence
//! `z`: the larger of the Q statistic (Jackson and Mudholkar, from the residual eigenvalues;
//! invalid when they are very uneven) and Box's g·χ²(h) fitted to the training windows'
//! residuals (Nomikos and MacGregor), which holds for bursty, non-Gaussian edges too: many edges that each move a little, but together
//! in a way no learned pattern explains, give a large residual although no single edge is
//! anomalous. The edges with the largest residual are reported.
//!
//! The decomposition is linfa's PCA over ndarray (the leading components; the residual
//! subspace's statistics come from traces of the covariance matrix). Windows judged anomalous are not learned;
//! the model is refitted every `refit_every` normal windows on the last `history` of them.

use std::collections::{HashMap, VecDeque};

use linfa::traits::{Fit, Predict};
use linfa::DatasetBase;
use linfa_reduction::Pca;
use ndarray::Array2;
use stormwatch_baseline::SubspaceModel;
use stormwatch_model::Edge;

/// PCA detector settings.
#[derive(Clone, Debug)]
pub struct CorrelatedConfig {
    /// Normal windows needed before the first fit.
    pub training_windows: usize,
    /// Normal windows kept for refits.
    pub history: usize,
    /// Busiest edges used as columns.
    pub max_edges: usize,
    /// Calls an edge needs per window on average to be a column. Rarer edges move by whole
    /// traces (a window has 0 calls, the next a loop of 12): their rates are far from the
    /// Gaussian noise the Q threshold assumes, and at low traffic they alarm on chance.
    pub min_calls_per_window: f64,
    /// Share of the variance the normal subspace explains.
    pub variance_kept: f64,
    /// Standard-normal quantile of the threshold (4.26: about 1 window in 100,000).
    pub z: f64,
    /// Normal windows between refits.
    pub refit_every: usize,
    /// Leading components computed (the normal subspace is at most this large).
    pub max_components: usize,
}

impl Default for CorrelatedConfig {
    fn default() -> Self {
        CorrelatedConfig {
            training_windows: 120,
            history: 720,
            max_edges: 64,
            min_calls_per_window: 10.0,
            variance_kept: 0.9,
            z: 4.26,
            refit_every: 60,
            max_components: 10,
        }
    }
}

/// A window the model rejects.
#[derive(Clone, Debug, PartialEq)]
pub struct Residual {
    /// Squared prediction error of the window.
    pub spe: f64,
    /// The residual threshold it exceeded.
    pub threshold: f64,
    /// Median SPE of the training windows.
    pub typical: f64,
    /// Edges by their share of the residual, largest first.
    pub contributions: Vec<(Edge, f64)>,
    /// Windows the model was fitted on.
    pub samples: usize,
}

/// The detector's state: the recent normal windows it refits on. The fitted model itself
/// lives in the baseline store (`BaselineStore::correlated`), so it is snapshotted and a
/// restarted engine judges at once; the history refills before the next refit.
pub struct Correlated {
    config: CorrelatedConfig,
    /// Normal windows: (entry requests, calls per entry request by edge).
    history: VecDeque<(u64, HashMap<Edge, f64>)>,
    since_fit: usize,
}

impl std::fmt::Debug for Correlated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Correlated").finish_non_exhaustive()
    }
}

impl Correlated {
    /// A detector with no history yet.
    pub fn new(config: CorrelatedConfig) -> Correlated {
        Correlated { config, history: VecDeque::new(), since_fit: 0 }
    }

    /// Judges one window's edge rates (calls per entry request; the window had `entries`
    /// entry requests and ends at event time `at`) against `model`; learns the window if
    /// normal, fitting or refitting `model` when due. `Some` when it is off-pattern.
    ///
    /// `frozen` says which edges' learning is frozen (the tuning). The model learns joint
    /// patterns, so it cannot leave one edge out: a window in which a frozen edge it watches
    /// (before the first fit: any frozen edge) has calls is judged but not learned, and
    /// freezing every baseline freezes the model.
    pub fn observe(
        &mut self,
        model: &mut Option<SubspaceModel>,
        rates: &[(Edge, f64)],
        entries: u64,
        at: u64,
        frozen: &dyn Fn(&Edge) -> bool,
    ) -> Option<Residual> {
        let verdict = model.as_ref().and_then(|model| judge(model, rates));
        let watched = |edge: &Edge| model.as_ref().is_none_or(|m| m.edges.contains(edge));
        let paused = rates.iter().any(|(edge, rate)| *rate > 0.0 && frozen(edge) && watched(edge));
        if verdict.is_none() && !paused {
            self.history.push_back((entries, rates.iter().copied().collect()));
            if self.history.len() > self.config.history {
                self.history.pop_front();
            }
            self.since_fit += 1;
            let due = model.is_none() || self.since_fit >= self.config.refit_every;
            if due && self.history.len() >= self.config.training_windows {
                // A failed refit keeps the model in force.
                if let Some(fitted) = fit(&self.history, &self.config, at) {
                    *model = Some(fitted);
                }
                self.since_fit = 0;
            }
        }
        verdict
    }
}

/// Fits the subspace model on `history`: the busiest edges standardised, the leading
/// principal components, and the residual's threshold. `None` when there is too little to fit
/// or the solver failed (the model in force stays).
fn fit(history: &VecDeque<(u64, HashMap<Edge, f64>)>, config: &CorrelatedConfig, at: u64) -> Option<SubspaceModel> {
    let edges = columns(history, config)?;
    let (rows, columns) = (history.len(), edges.len());
    let (data, mean, scale) = standardised(history, &edges);
    // Few leading components: linfa's iterative eigensolver breaks down when asked for all of
    // them. The residual's statistics come from traces of the covariance matrix instead.
    let leading = config.max_components.min(columns - 1);
    let fitted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Pca::params(leading).fit(&DatasetBase::from(data.clone())).ok()
    }));
    let pca = fitted.ok().flatten()?;
    let components = components(&pca, columns, leading)?;
    let leading = components.len();
    // Leading eigenvalues as the variances of the training projections (the units SPE is in).
    let training: Array2<f64> = pca.predict(&data);
    let eigenvalues: Vec<f64> = (0..leading)
        .map(|j| {
            let column = training.column(j);
            let m = column.sum() / rows as f64;
            column.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (rows as f64 - 1.0)
        })
        .collect();
    if eigenvalues.iter().chain(components.iter().flatten()).any(|v| !v.is_finite()) {
        return None;
    }
    let (kept, jackson_mudholkar) = jackson_mudholkar(&data, &eigenvalues, config)?;
    let mut model = SubspaceModel {
        edges,
        mean,
        scale,
        components,
        kept,
        threshold: 0.0,
        typical: 0.0,
        samples: rows,
        fitted_unix_nano: at,
    };
    let mut spes: Vec<f64> = history.iter().map(|(_, w)| spe(&model, &standardise(&model, w)).0).collect();
    model.threshold = jackson_mudholkar.max(box_threshold(&spes, config.z));
    spes.sort_by(f64::total_cmp);
    model.typical = spes[spes.len() / 2];
    (model.threshold.is_finite() && model.threshold > 0.0).then_some(model)
}

/// The model's columns: the busiest edges, among those busy enough for their noise to be
/// Gaussian. `None` when there are too few of them, or too few windows for as many columns.
fn columns(history: &VecDeque<(u64, HashMap<Edge, f64>)>, config: &CorrelatedConfig) -> Option<Vec<Edge>> {
    let mut totals: HashMap<Edge, f64> = HashMap::new();
    for (entries, window) in history {
        for (edge, rate) in window {
            *totals.entry(*edge).or_default() += rate * *entries as f64;
        }
    }
    let minimum = config.min_calls_per_window * history.len() as f64;
    let mut edges: Vec<(Edge, f64)> = totals.into_iter().filter(|(_, calls)| *calls >= minimum).collect();
    edges.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    edges.truncate(config.max_edges);
    let edges: Vec<Edge> = edges.into_iter().map(|(edge, _)| edge).collect();
    (edges.len() >= 3 && history.len() > edges.len()).then_some(edges)
}

/// The windows' rates on `edges`, one row per window, with each column standardised (its mean
/// and scale returned); a floor on the scale keeps near-constant edges from dominating.
fn standardised(history: &VecDeque<(u64, HashMap<Edge, f64>)>, edges: &[Edge]) -> (Array2<f64>, Vec<f64>, Vec<f64>) {
    let (rows, columns) = (history.len(), edges.len());
    let mut data = Array2::<f64>::zeros((rows, columns));
    for (i, (_, window)) in history.iter().enumerate() {
        for (j, edge) in edges.iter().enumerate() {
            data[[i, j]] = window.get(edge).copied().unwrap_or(0.0);
        }
    }
    let mut mean = vec![0.0; columns];
    let mut scale = vec![0.0; columns];
    for j in 0..columns {
        let column = data.column(j);
        mean[j] = column.sum() / rows as f64;
        let variance = column.iter().map(|v| (v - mean[j]).powi(2)).sum::<f64>() / (rows as f64 - 1.0);
        scale[j] = variance.sqrt().max(0.01 + 0.05 * mean[j].abs());
    }
    for i in 0..rows {
        for j in 0..columns {
            data[[i, j]] = (data[[i, j]] - mean[j]) / scale[j];
        }
    }
    (data, mean, scale)
}

/// The leading directions, orthonormal whatever the iterative solver returned (so the residual
/// is a true projection). `None` when the solver gave none or a degenerate one.
fn components(pca: &Pca<f64>, columns: usize, leading: usize) -> Option<Vec<Vec<f64>>> {
    // From the projections of the origin and the unit vectors (the model keeps its hyperplane
    // private): V[i][j] = project(e_i)[j] - project(0)[j].
    let mut probes = Array2::<f64>::zeros((columns + 1, columns));
    for i in 0..columns {
        probes[[i + 1, i]] = 1.0;
    }
    let projected: Array2<f64> = pca.predict(&probes);
    // The solver may return fewer components than asked for.
    let leading = leading.min(projected.ncols());
    if leading == 0 {
        return None;
    }
    let mut components: Vec<Vec<f64>> =
        (0..leading).map(|j| (0..columns).map(|i| projected[[i + 1, j]] - projected[[0, j]]).collect()).collect();
    for j in 0..components.len() {
        for k in 0..j {
            let dot: f64 = components[j].iter().zip(&components[k]).map(|(a, b)| a * b).sum();
            let previous = components[k].clone();
            for (a, b) in components[j].iter_mut().zip(&previous) {
                *a -= dot * b;
            }
        }
        let norm = components[j].iter().map(|a| a * a).sum::<f64>().sqrt();
        if norm < 1e-9 {
            return None;
        }
        for a in &mut components[j] {
            *a /= norm;
        }
    }
    Some(components)
}

/// How many leading components explain `variance_kept` of the variance, and the residual's
/// threshold by Jackson and Mudholkar from the traces of the covariance matrix's first three
/// powers (0 where it breaks down: h0 <= 0, as with very uneven residual eigenvalues from a few
/// bursty edges). `None` when the data has no residual variance.
fn jackson_mudholkar(data: &Array2<f64>, eigenvalues: &[f64], config: &CorrelatedConfig) -> Option<(usize, f64)> {
    let rows = data.nrows();
    let covariance = data.t().dot(data) / (rows as f64 - 1.0);
    let square = covariance.dot(&covariance);
    let trace1: f64 = covariance.diag().sum();
    let trace2: f64 = square.diag().sum();
    let trace3: f64 = square.dot(&covariance).diag().sum();
    if trace1 <= 0.0 {
        return None;
    }
    let mut kept = 0;
    let mut explained = 0.0;
    while kept < eigenvalues.len() && explained < config.variance_kept * trace1 {
        explained += eigenvalues[kept];
        kept += 1;
    }
    let kept_power = |power: i32| eigenvalues[..kept].iter().map(|l| l.powi(power)).sum::<f64>();
    let (theta1, theta2, theta3) = (trace1 - kept_power(1), trace2 - kept_power(2), trace3 - kept_power(3));
    if theta1 <= 0.0 || theta2 <= 0.0 {
        return None;
    }
    let h0 = 1.0 - 2.0 * theta1 * theta3 / (3.0 * theta2 * theta2);
    let threshold = (h0 > 0.0)
        .then(|| {
            theta1
                * (config.z * (2.0 * theta2 * h0 * h0).sqrt() / theta1
                    + 1.0
                    + theta2 * h0 * (h0 - 1.0) / (theta1 * theta1))
                    .powf(1.0 / h0)
        })
        .filter(|t| t.is_finite())
        .unwrap_or(0.0);
    Some((kept, threshold))
}

/// Box's approximation from the training residuals themselves (Nomikos and MacGregor):
/// SPE ~ g chi2(h) with g = var / 2 mean and h = 2 mean^2 / var; the chi2 quantile at `z` by
/// Wilson-Hilferty. It holds whatever the solver's accuracy, and bursty edges widen it.
fn box_threshold(spes: &[f64], z: f64) -> f64 {
    let rows = spes.len() as f64;
    let m = spes.iter().sum::<f64>() / rows;
    let v = spes.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (rows - 1.0);
    if m > 0.0 && v > 0.0 {
        let (g, h) = (v / (2.0 * m), 2.0 * m * m / v);
        let a = 2.0 / (9.0 * h);
        g * h * (1.0 - a + z * a.sqrt()).max(0.0).powi(3)
    } else {
        0.0
    }
}

fn standardise(model: &SubspaceModel, rates: &HashMap<Edge, f64>) -> Vec<f64> {
    model
        .edges
        .iter()
        .enumerate()
        .map(|(j, edge)| (rates.get(edge).copied().unwrap_or(0.0) - model.mean[j]) / model.scale[j])
        .collect()
}

/// (SPE, residual vector) of a standardised window.
fn spe(model: &SubspaceModel, z: &[f64]) -> (f64, Vec<f64>) {
    let mut residual = z.to_vec();
    for direction in &model.components[..model.kept.min(model.components.len())] {
        let score: f64 = z.iter().zip(direction).map(|(a, b)| a * b).sum();
        for (r, d) in residual.iter_mut().zip(direction) {
            *r -= score * d;
        }
    }
    (residual.iter().map(|r| r * r).sum(), residual)
}

fn judge(model: &SubspaceModel, rates: &[(Edge, f64)]) -> Option<Residual> {
    let map: HashMap<Edge, f64> = rates.iter().copied().collect();
    let (spe, residual) = spe(model, &standardise(model, &map));
    if spe <= model.threshold {
        return None;
    }
    let mut contributions: Vec<(Edge, f64)> =
        model.edges.iter().zip(&residual).map(|(edge, r)| (*edge, r * r / spe)).collect();
    contributions.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    contributions.truncate(5);
    Some(Residual { spe, threshold: model.threshold, typical: model.typical, contributions, samples: model.samples })
}

#[cfg(test)]
mod tests {
    use stormwatch_model::{Node, Sym};

    use super::*;

    fn edge(i: usize) -> Edge {
        Edge {
            from: Node::service(Sym::new("gateway"), Sym::new("GET /")),
            to: Node::service(Sym::new(&format!("svc{i:02}")), Sym::new("GET /work")),
        }
    }

    /// 20 edges driven by 2 latent traffic factors (two entry points) plus small noise.
    struct Traffic(u64);

    impl Traffic {
        fn noise(&mut self) -> f64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        }

        fn window(&mut self) -> Vec<(Edge, f64)> {
            let (a, b) = (1.0 + 0.3 * self.noise(), 1.0 + 0.3 * self.noise());
            (0..20)
                .map(|i| {
                    let rate = if i < 10 { a * (1.0 + i as f64 * 0.1) } else { b * (0.5 + i as f64 * 0.05) };
                    (edge(i), rate * (1.0 + 0.02 * self.noise()))
                })
                .collect()
        }
    }

    /// The detector and the model it fitted (as the engine keeps it in the baseline store).
    struct Trained {
        detector: Correlated,
        model: Option<SubspaceModel>,
    }

    impl Trained {
        fn observe(&mut self, rates: &[(Edge, f64)]) -> Option<Residual> {
            self.detector.observe(&mut self.model, rates, 1_000, 0, &|_| false)
        }
    }

    fn trained() -> (Trained, Traffic) {
        let mut detector = Trained { detector: Correlated::new(CorrelatedConfig::default()), model: None };
        let mut traffic = Traffic(7);
        for _ in 0..200 {
            detector.observe(&traffic.window());
        }
        assert!(detector.model.as_ref().is_some_and(SubspaceModel::is_consistent));
        (detector, traffic)
    }

    #[test]
    fn normal_joint_movement_is_quiet() {
        let (mut detector, mut traffic) = trained();
        let alarms = (0..1_000).filter(|_| detector.observe(&traffic.window()).is_some()).count();
        assert!(alarms <= 10, "{alarms} alarms in 1000 normal windows");
        // A large movement along the learned pattern (both factors at 1.6, far outside the
        // training swings of +-15%) is not off-pattern.
        let in_pattern: Vec<(Edge, f64)> = (0..20)
            .map(|i| (edge(i), 1.6 * if i < 10 { 1.0 + i as f64 * 0.1 } else { 0.5 + i as f64 * 0.05 }))
            .collect();
        assert!(detector.observe(&in_pattern).is_none());
    }

    /// Constant, duplicated and appearing-and-vanishing edges: the fit may give up, but the
    /// detector never panics and never alarms on them.
    #[test]
    fn degenerate_traffic_never_panics() {
        let mut detector = Trained { detector: Correlated::new(CorrelatedConfig::default()), model: None };
        for step in 0..400usize {
            let mut window: Vec<(Edge, f64)> = (0..30).map(|i| (edge(i), if i < 15 { 1.0 } else { 2.0 })).collect();
            if step % 7 == 0 {
                window.push((edge(40 + step % 5), 0.5));
            }
            assert!(detector.observe(&window).is_none(), "step {step}");
        }
    }

    /// One edge with its own independent noise beside many nearly constant ones makes the
    /// residual eigenvalues very uneven: the Jackson-Mudholkar approximation breaks down there
    /// (h0 < 0; on the large generated scenario it gave a threshold of 0.33 against a typical
    /// residual of 3, and an alarm in nearly every window, which then were never learned). The
    /// threshold from the training residuals holds.
    #[test]
    fn uneven_residuals_do_not_alarm_on_chance() {
        let mut detector = Trained { detector: Correlated::new(CorrelatedConfig::default()), model: None };
        let mut traffic = Traffic(11);
        let uneven = |traffic: &mut Traffic| -> Vec<(Edge, f64)> {
            let mut window = traffic.window();
            window.push((edge(20), 1.0 + 0.3 * traffic.noise()));
            for i in 21..51 {
                window.push((edge(i), 1.0 + 0.035 * traffic.noise()));
            }
            window
        };
        for _ in 0..200 {
            detector.observe(&uneven(&mut traffic));
        }
        let model = detector.model.clone().expect("fitted");
        assert!(model.threshold > 2.0 * model.typical, "threshold {} vs typical {}", model.threshold, model.typical);
        let alarms = (0..1_000).filter(|_| detector.observe(&uneven(&mut traffic)).is_some()).count();
        assert!(alarms <= 10, "{alarms} alarms in 1000 normal windows");
    }

    #[test]
    fn many_small_off_pattern_moves_are_a_correlated_storm() {
        let (mut detector, mut traffic) = trained();
        // Half of the first factor's edges rise 8% while the rest do not: each move is small
        // next to the factor's 30% swings, but no learned pattern moves them apart.
        let mut window = traffic.window();
        for (i, (_, rate)) in window.iter_mut().enumerate() {
            if i % 2 == 0 && i < 10 {
                *rate *= 1.08;
            }
        }
        let residual = detector.observe(&window).expect("off-pattern window");
        assert!(residual.spe > residual.threshold);
        let top: Vec<usize> = residual
            .contributions
            .iter()
            .take(3)
            .map(|(edge, _)| edge.to.service.as_str()[3..].parse().unwrap())
            .collect();
        // The edges that moved apart from their factor carry the residual.
        assert!(top.iter().all(|i| *i < 10), "{top:?}");
        assert!(residual.contributions[0].1 > 0.1);
        // Not learned: the same window alarms again.
        assert!(detector.observe(&window).is_some());
        // A restarted engine (no history, the model restored from the snapshot) judges at once.
        let mut restarted = Trained { detector: Correlated::new(CorrelatedConfig::default()), model: detector.model };
        assert_eq!(restarted.observe(&window).map(|r| r.spe), Some(residual.spe));
    }

    #[test]
    fn frozen_edges_pause_the_models_learning() {
        let fresh = || Trained { detector: Correlated::new(CorrelatedConfig::default()), model: None };
        let mut traffic = Traffic(7);
        // Every baseline frozen: no model is ever fitted.
        let mut all = fresh();
        for _ in 0..200 {
            all.detector.observe(&mut all.model, &traffic.window(), 1_000, 0, &|_| true);
        }
        assert!(all.model.is_none() && all.detector.history.is_empty());
        // One watched edge frozen after the fit: the model keeps judging, and stops refitting.
        let (mut trained, mut traffic) = trained();
        let fitted = trained.model.as_ref().unwrap().fitted_unix_nano;
        let watched = trained.model.as_ref().unwrap().edges[0];
        let history = trained.detector.history.len();
        for at in 1..=500 {
            let window = traffic.window();
            trained.detector.observe(&mut trained.model, &window, 1_000, at, &|e| *e == watched);
        }
        assert_eq!(trained.detector.history.len(), history, "frozen windows were learned");
        assert_eq!(trained.model.as_ref().unwrap().fitted_unix_nano, fitted, "the model was refitted");
        // A frozen edge the model does not watch does not pause it.
        let unwatched = edge(99);
        for at in 501..=1_000 {
            let window = traffic.window();
            trained.detector.observe(&mut trained.model, &window, 1_000, at, &|e| *e == unwatched);
        }
        assert!(trained.model.as_ref().unwrap().fitted_unix_nano > fitted, "an unwatched freeze paused the model");
    }
}
