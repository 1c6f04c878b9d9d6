//! ESP-IDF environment, and the OTA manifest public key compiled into the image.

fn main() {
    // Passes the ESP-IDF build environment (linker args, cfg flags) to rustc.
    embuild::espidf::sysenv::output();

    // The Ed25519 key that OTA manifests must be signed with (64 hex characters). It is
    // part of the image on purpose: an attacker who controls the server still cannot
    // make devices install an image the fleet owner did not sign.
    println!("cargo:rerun-if-env-changed=FLEETWIRE_OTA_PUBLIC_KEY");
    let hex = std::env::var("FLEETWIRE_OTA_PUBLIC_KEY")
        .expect("set FLEETWIRE_OTA_PUBLIC_KEY to the 64-hex-character Ed25519 public key of your OTA signing key");
    fleetwire_core_key_check(&hex);
    let out = std::path::Path::new(&std::env::var("OUT_DIR").unwrap()).join("ota_public_key.rs");
    std::fs::write(out, format!("pub const OTA_PUBLIC_KEY_HEX: &str = {hex:?};\n")).unwrap();
}

fn fleetwire_core_key_check(hex: &str) {
    assert!(hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()), "FLEETWIRE_OTA_PUBLIC_KEY must be 64 hex characters");
}
