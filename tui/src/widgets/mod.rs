//! Widgets of our own, one per file: the ones ratatui does not have.

pub mod cycle;
pub mod histogram;
pub mod timeline;
