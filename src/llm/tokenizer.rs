//! HF `tokenizer.json` through the tokenizers crate.

use std::path::Path;

use crate::error::{Error, Result};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::checkpoint(format!(
                "{}: no such tokenizer.json",
                path.display()
            )));
        }
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| {
            Error::checkpoint(format!(
                "{}: not a valid tokenizer.json ({e})",
                path.display()
            ))
        })?;
        Ok(Tokenizer { inner })
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| Error::config(format!("encode: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn encode_batch(
        &self,
        texts: Vec<String>,
        add_special_tokens: bool,
    ) -> Result<Vec<Vec<u32>>> {
        let encs = self
            .inner
            .encode_batch(texts, add_special_tokens)
            .map_err(|e| Error::config(format!("encode_batch: {e}")))?;
        Ok(encs.iter().map(|e| e.get_ids().to_vec()).collect())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let n = self.vocab_size();
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= n) {
            return Err(Error::config(format!(
                "decode: token id {bad} is outside the vocabulary of {n}"
            )));
        }
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::config(format!("decode: {e}")))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
