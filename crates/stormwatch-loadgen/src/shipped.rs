//! The scenarios shipped with stormwatch (the files in this crate's `scenarios/` folder, also
//! reached as `tests/scenarios/` from the repository root), embedded so that a command that
//! needs a default scenario works from any directory.

/// 300 generated services in call graphs shaped like Alibaba's 2021 microservice traces, plus
/// a backend-for-frontend under attack: the default traffic of `stormwatch bench` and of the
/// stage benchmarks.
pub const LARGE_GENERATED: &str = include_str!("../scenarios/large-generated.toml");

/// A small web shop: the scenario the README's quick start and many tests use.
pub const SHOP: &str = include_str!("../scenarios/shop.toml");
