//! `safetensors`: a `config.json` and a `model.safetensors` (length-prefixed config, then
//! the weights file), loaded as a Hugging Face model directory.

use crate::split;

pub fn run(data: &[u8]) {
    let (config, weights) = split::prefixed(data);
    let dir = crate::scratch("safetensors");
    crate::write(&dir.join("config.json"), config);
    crate::write(&dir.join("model.safetensors"), weights);
    let _ = airlock_engine::fuzzing::safetensors(&dir);
}
