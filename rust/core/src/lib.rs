//! Pure-Rust core of the Deliverability Gateway.
//!
//! Everything here is sans-I/O and free of Python so it can be tested with
//! `cargo test` and reused by the thin PyO3 bindings crate (`rust/python`).

pub mod dkim;
pub mod invariants;
pub mod lint;
pub mod message_scan;
pub mod message_view;
pub mod mime_tree;
pub mod queue_id;
pub mod shaping;
pub mod transparency;

pub use dkim::{Signer, SignerConfig};
pub use lint::{prepare, FixOptions, Prepared};
pub use message_scan::{scan_and_normalize, MessageScan};
pub use message_view::ParsedMessage;
pub use queue_id::QueueIdGenerator;
pub use transparency::dot_stuff;
