//! Any upload manifest (the JSON chunk list a client sends) is accepted with a normalised path
//! or refused with a typed error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cfg = sb_core::config::FilesConfig::default();
    if let Ok(req) = serde_json::from_slice::<sb_proto::UploadStart>(data)
        && let Ok((path, chunks)) = sb_files::check_manifest(&req, &cfg)
    {
        assert!(path.starts_with('/') && !path.contains("//") && !path.ends_with('/'));
        assert_eq!(
            chunks.iter().map(|c| u64::from(c.len)).sum::<u64>(),
            req.size
        );
    }
    let _ = sb_files::normalize_path(&String::from_utf8_lossy(data), 4096);
});
