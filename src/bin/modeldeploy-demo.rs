//! `modeldeploy-demo`: the demo model server and load generator of the
//! `modeldeploy-demo` crate (`demo/`). It is built from this package so that
//! integration tests can run it as `env!("CARGO_BIN_EXE_modeldeploy-demo")`.

fn main() -> std::process::ExitCode {
    modeldeploy_demo::cli::main()
}
