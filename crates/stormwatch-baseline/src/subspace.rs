//! The learned normal subspace of the correlated-storm detector: which edges it watches, how
//! they are standardised, the principal directions of their joint movement and the residual
//! threshold. Fitted by stormwatch-detect; kept here so it is snapshotted with the other
//! baselines and a restart does not start blind.

use stormwatch_model::Edge;

/// A fitted PCA model over per-window edge rates.
#[derive(Clone, Debug, PartialEq)]
pub struct SubspaceModel {
    /// Columns: the edges the model watches.
    pub edges: Vec<Edge>,
    /// Per column: the training mean used to standardise a window.
    pub mean: Vec<f64>,
    /// Per column: the training scale used to standardise a window.
    pub scale: Vec<f64>,
    /// Leading principal directions over the columns (each `edges.len()` long).
    pub components: Vec<Vec<f64>>,
    /// Directions spanning the normal subspace (the first `kept` of `components`).
    pub kept: usize,
    /// Q-statistic threshold on the squared residual.
    pub threshold: f64,
    /// Median squared residual of the training windows.
    pub typical: f64,
    /// Windows the model was fitted on.
    pub samples: usize,
    /// Event time of the fit, Unix nanoseconds.
    pub fitted_unix_nano: u64,
}

impl SubspaceModel {
    /// Whether the dimensions agree and every number is finite (a snapshot is checked with it).
    pub fn is_consistent(&self) -> bool {
        let columns = self.edges.len();
        self.mean.len() == columns
            && self.scale.len() == columns
            && self.kept <= self.components.len()
            && self.components.iter().all(|c| c.len() == columns)
            && self.scale.iter().all(|s| *s > 0.0)
            && self
                .mean
                .iter()
                .chain(&self.scale)
                .chain(self.components.iter().flatten())
                .chain([&self.threshold, &self.typical])
                .all(|v| v.is_finite())
    }
}
