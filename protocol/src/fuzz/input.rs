//! A reader of fuzz input as a stream of choices: every harness draws its
//! decisions from the bytes, so libFuzzer's mutations, the seeded campaign's
//! random bytes and proptest's shrinking all steer the same code. Reads past
//! the end give zeros, so every input is a complete run.

pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    pub fn bool(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    /// True about once in `n` (`n` ≥ 1).
    pub fn one_in(&mut self, n: u8) -> bool {
        self.byte().is_multiple_of(n.max(1))
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        let v = u16::from_le_bytes([self.byte(), self.byte()]);
        usize::from(v) % n
    }

    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.byte();
        }
        u64::from_le_bytes(b)
    }

    /// A number that is small most of the time, sometimes anything.
    pub fn number(&mut self) -> u64 {
        match self.byte() % 8 {
            0 => self.u64(),
            1 => u64::MAX - u64::from(self.byte()),
            _ => u64::from(self.byte() % 32),
        }
    }

    /// Up to `max` raw bytes.
    pub fn bytes(&mut self, max: usize) -> &'a [u8] {
        let n = self.below(max + 1).min(self.data.len());
        let (b, rest) = self.data.split_at(n);
        self.data = rest;
        b
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}
