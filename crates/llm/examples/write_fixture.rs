//! Writes the tiny GPT-2 fixture to a folder: `cargo run -p n0m1-llm --example write_fixture DIR`.
fn main() {
    let dir = std::env::args().nth(1).expect("usage: write_fixture DIR");
    n0m1_llm::fixture::write_tiny_gpt2(std::path::Path::new(&dir), 42).expect("fixture");
}
