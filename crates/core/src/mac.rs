//! HMAC-SHA256, keyed once for every use: CSRF tokens and refresh successors (service), the
//! master key's sub-keys (keys) and webhook signatures (webhooks).

use hmac::Hmac;
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

pub type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256 keyed with `key` as given. RFC 2104 §2: a key longer than the 64-byte block is
/// hashed first, a shorter one zero-padded, which is what `Mac::new_from_slice` does, without
/// its error path for a key length that cannot be wrong. The padded key is zeroized on drop.
pub fn hmac_sha256(key: &[u8]) -> HmacSha256 {
    let mut block = Zeroizing::new([0u8; 64]);
    if key.len() > block.len() {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    <HmacSha256 as hmac::digest::KeyInit>::new(&(*block).into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use hmac::Mac as _;

    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_and_new_from_slice() {
        // RFC 4231 test case 2.
        let mut mac = hmac_sha256(b"Jefe");
        mac.update(b"what do ya want for nothing?");
        let expected = [
            0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e, 0x6a, 0x04, 0x24, 0x26, 0x08, 0x95,
            0x75, 0xc7, 0x5a, 0x00, 0x3f, 0x08, 0x9d, 0x27, 0x39, 0x83, 0x9d, 0xec, 0x58, 0xb9,
            0x64, 0xec, 0x38, 0x43,
        ];
        assert_eq!(mac.finalize().into_bytes().as_slice(), expected);
        // A 32-byte key (a derived sub-key), a block-sized one, and one longer than the block,
        // which is hashed first.
        for len in [32, 64, 100] {
            let key = vec![b'k'; len];
            let mut ours = hmac_sha256(&key);
            let mut theirs = HmacSha256::new_from_slice(&key).unwrap();
            ours.update(b"body");
            theirs.update(b"body");
            assert_eq!(ours.finalize().into_bytes(), theirs.finalize().into_bytes());
        }
    }
}
