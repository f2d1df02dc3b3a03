//! `gguf`: the input is a whole GGUF file, loaded as a GGUF model directory (no
//! `tokenizer.json` beside it, so the tokenizer is rebuilt from the file's metadata).

pub fn run(data: &[u8]) {
    let dir = crate::scratch("gguf");
    crate::write(&dir.join("model.gguf"), data);
    let _ = airlock_engine::fuzzing::gguf(&dir);
}
