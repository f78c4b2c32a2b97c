//! Rebuilds when a migration changes: `embed_migrations!` reads the `migrations` folder at
//! compile time, and cargo does not otherwise notice a new file there (a stale embedded set
//! would migrate test templates named after the new files).

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
