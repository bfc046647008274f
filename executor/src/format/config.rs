//! The repository `config` file and the chunker polynomial it must carry.

use rand::RngCore;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Config {
    pub version: u32,
    pub id: String,
    pub chunker_polynomial: String,
}

impl Config {
    /// A fresh version-2 config with a random ID and a random irreducible polynomial.
    pub fn new_v2() -> Config {
        let mut id = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut id);
        Config {
            version: 2,
            id: hex::encode(id),
            chunker_polynomial: format!("{:x}", random_polynomial()),
        }
    }

    /// restic refuses other versions and reducible polynomials; so do we.
    pub fn validate(&self) -> Result<(), String> {
        if self.version != 1 && self.version != 2 {
            return Err(format!("unsupported repository version {}", self.version));
        }
        let p = u64::from_str_radix(&self.chunker_polynomial, 16)
            .map_err(|e| format!("chunker_polynomial {:?}: {e}", self.chunker_polynomial))?;
        if !is_irreducible(p) {
            return Err(format!(
                "chunker_polynomial {} is not irreducible",
                self.chunker_polynomial
            ));
        }
        Ok(())
    }
}

fn degree(p: u64) -> i32 {
    63 - p.leading_zeros() as i32
}

/// a mod m over GF(2).
fn poly_mod(mut a: u128, m: u64) -> u64 {
    let dm = degree(m);
    let m = m as u128;
    while a != 0 {
        let da = 127 - a.leading_zeros() as i32;
        if da < dm {
            break;
        }
        a ^= m << (da - dm);
    }
    a as u64
}

fn mul_mod(a: u64, b: u64, m: u64) -> u64 {
    let mut r: u128 = 0;
    for i in 0..64 {
        if b >> i & 1 == 1 {
            r ^= (a as u128) << i;
        }
    }
    poly_mod(r, m)
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        let r = poly_mod(a as u128, b);
        a = b;
        b = r;
    }
    a
}

/// Ben-Or: f of degree n is irreducible iff gcd(f, x^(2^i) - x) = 1 for i in 1..=n/2.
pub fn is_irreducible(f: u64) -> bool {
    let n = degree(f);
    if n < 1 {
        return false;
    }
    let mut h: u64 = 2; // the polynomial x
    for _ in 0..n / 2 {
        h = mul_mod(h, h, f);
        if gcd(f, h ^ 2) != 1 {
            return false;
        }
    }
    true
}

/// Degree exactly 53, constant term 1, irreducible, like restic's `RandomPolynomial`.
pub fn random_polynomial() -> u64 {
    loop {
        let mut p = rand::rngs::OsRng.next_u64() & ((1 << 54) - 1);
        p |= (1 << 53) | 1;
        if is_irreducible(p) {
            return p;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_polynomial_is_irreducible_and_products_are_not() {
        assert!(is_irreducible(0x3129b56dd3e3b3));
        // x^2+x+1 squared-ish: (x^2+x+1)*(x+1) = x^3+1
        assert!(!is_irreducible(0b1001));
        assert!(is_irreducible(0b111));
        let p = random_polynomial();
        assert_eq!(degree(p), 53);
        let c = Config::new_v2();
        c.validate().unwrap();
        assert_eq!(c.chunker_polynomial.len(), 14);
    }
}
