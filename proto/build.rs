fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=proto/weft.proto");
    prost_build::compile_protos(&["proto/weft.proto"], &["proto"])
}
