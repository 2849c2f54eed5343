//! AFL++ entry point; the body is `modeldeploy_fuzz::request`.
fn main() {
    afl::fuzz!(|data: &[u8]| modeldeploy_fuzz::request(data));
}
