//! Shared by the fuzz targets.

use stormwatch_baseline::BaselineStore;
use stormwatch_detect::{DetectConfig, Engine, EngineConfig, WindowConfig};

/// Pushes decoded spans through a fresh engine, then flushes it: assembly of whatever trace
/// shapes the input makes (cycles, duplicate ids, missing roots, any timestamps), features,
/// detectors and windows. Baselines judge from their first sample and windows from the first
/// window, so the traces of one input are judged against each other.
pub fn through_the_engine(decoded: stormwatch_otlp::Decoded) {
    let config = EngineConfig {
        detect: DetectConfig { learning_min_samples: 1, ..DetectConfig::default() },
        window: WindowConfig { min_windows: 1, ..WindowConfig::default() },
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(config, BaselineStore::new(1_000), || 0);
    let mut alerts = Vec::new();
    engine.push(decoded.spans, &mut alerts);
    engine.flush(&mut alerts);
}
