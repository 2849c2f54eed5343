//! AFL++ entry point; the body is `modeldeploy_fuzz::reference`.
fn main() {
    afl::fuzz!(|data: &[u8]| modeldeploy_fuzz::reference(data));
}
