//! Link settings that torch-sys cannot express for its dependents:
//! * an rpath to libtorch, so that `infini`, its tests and benches find the shared libraries of the
//!   PyTorch wheel in the project's virtual environment without `LD_LIBRARY_PATH`;
//! * `libtorch_cuda` kept as a needed library (the linker's `--as-needed` would drop it, since no
//!   symbol is referenced directly), so the same binary uses a GPU where libtorch sees one.
//!
//! torch-sys (`links = "tch"`) publishes the folder it linked against as `DEP_TCH_LIBTORCH_LIB`
//! to the crates that depend on it directly, which is why Cargo.toml names it.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=torch-sys did not report its libtorch folder; binaries will need LD_LIBRARY_PATH");
        return;
    };
    println!("cargo:rustc-link-search=native={dir}");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    if Path::new(&dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
