//! `mayfly bench`: placeholder until the comparison is wired.

use crate::cli::BenchArgs;

pub fn main(_args: BenchArgs) -> i32 {
    eprintln!("mayfly: bench is not available yet");
    2
}
