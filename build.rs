//! `refinery::embed_migrations!` reads `migrations/` at compile time, and
//! cargo does not watch that folder by itself: without this, a new
//! migration file is missing from the binary until some Rust file changes.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
