//! tui: the ratatui dashboard of live and recorded sessions.
//!
//! Empty until its issue lands: nothing here yet, and nothing pretends.
