//! The KV-cache budget: a pool of fixed-size blocks of cache positions. A sequence holds the
//! blocks its cached positions need and takes more as it grows; when none are free the
//! scheduler makes admission wait or preempts a sequence (see `engine.rs`).

/// Cache positions per block: small enough that a short request wastes little, large enough
/// that the bookkeeping is per block, not per token.
pub const BLOCK_POSITIONS: usize = 16;

/// Bytes one cached position takes across all layers: a key and a value vector per KV
/// head per layer, `elem_bytes` per element (2 for an `f16` cache, the CPU's default and
/// wgpu's; 4 for the CPU's `f32` one).
pub fn kv_bytes_per_token(
    layers: usize,
    kv_heads: usize,
    head_dim: usize,
    elem_bytes: usize,
) -> usize {
    2 * layers * kv_heads * head_dim * elem_bytes
}

/// Block accounting for one model's KV-cache budget.
#[derive(Debug)]
pub struct BlockPool {
    block_bytes: usize,
    total: usize,
    free: usize,
}

impl BlockPool {
    /// A pool of `budget_bytes / (BLOCK_POSITIONS × bytes_per_position)` blocks.
    pub fn new(budget_bytes: usize, bytes_per_position: usize) -> BlockPool {
        let block_bytes = (BLOCK_POSITIONS * bytes_per_position).max(1);
        let total = budget_bytes / block_bytes;
        BlockPool {
            block_bytes,
            total,
            free: total,
        }
    }

    /// Blocks that `positions` cached positions occupy.
    pub fn blocks_for(positions: usize) -> usize {
        positions.div_ceil(BLOCK_POSITIONS)
    }

    /// Blocks in the whole pool.
    pub fn blocks(&self) -> usize {
        self.total
    }

    /// Positions the whole pool can hold.
    pub fn capacity_positions(&self) -> usize {
        self.total * BLOCK_POSITIONS
    }

    /// Bytes one block stands for.
    pub fn block_bytes(&self) -> usize {
        self.block_bytes
    }

    pub fn free(&self) -> usize {
        self.free
    }

    /// Takes `n` blocks if that many are free.
    pub fn try_take(&mut self, n: usize) -> bool {
        if n > self.free {
            return false;
        }
        self.free -= n;
        true
    }

    /// Returns `n` blocks taken earlier.
    pub fn give_back(&mut self, n: usize) {
        self.free = (self.free + n).min(self.total);
    }

    /// Bytes of the budget held by sequences.
    pub fn bytes_in_use(&self) -> usize {
        (self.total - self.free) * self.block_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_up_and_return() {
        let mut pool = BlockPool::new(10 * BLOCK_POSITIONS * 8 + 7, 8);
        assert_eq!(pool.capacity_positions(), 10 * BLOCK_POSITIONS);
        assert_eq!(BlockPool::blocks_for(0), 0);
        assert_eq!(BlockPool::blocks_for(1), 1);
        assert_eq!(BlockPool::blocks_for(BLOCK_POSITIONS + 1), 2);
        assert!(pool.try_take(7));
        assert!(!pool.try_take(4));
        assert_eq!(pool.bytes_in_use(), 7 * BLOCK_POSITIONS * 8);
        pool.give_back(7);
        assert_eq!(pool.bytes_in_use(), 0);
        assert_eq!(pool.free(), 10);
    }
}
