//! AFL++ entry point; the body is `modeldeploy_fuzz::exposition`.
fn main() {
    afl::fuzz!(|data: &[u8]| modeldeploy_fuzz::exposition(data));
}
