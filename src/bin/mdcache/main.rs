//! The `mdcache` command-line tool.
fn main() {}
