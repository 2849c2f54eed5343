fn main() {
    print!("{}", modeldeploy::api::crd_yaml());
}
