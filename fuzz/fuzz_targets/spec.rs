//! AFL++ entry point; the body is `modeldeploy_fuzz::spec`.
fn main() {
    afl::fuzz!(|data: &[u8]| modeldeploy_fuzz::spec(data));
}
