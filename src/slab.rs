//! A table of values addressed by keys that go stale. A key names a slot and the
//! generation of the value it was given for, so a key kept past its value's removal never
//! reaches the value that reuses the slot: the ring's operations and descriptors and the
//! relay's clients are all kept this way.

/// A slot and the generation of the value that was put there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    index: u32,
    generation: u32,
}

impl Key {
    /// A number that identifies the value while it exists (for tokens and logs).
    pub fn index(self) -> u32 {
        self.index
    }

    /// The key as one number (generation high, slot low), and back.
    pub fn to_u64(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }

    pub fn from_u64(data: u64) -> Key {
        Key {
            index: data as u32,
            generation: (data >> 32) as u32,
        }
    }
}

/// Values in reusable slots.
#[derive(Debug)]
pub struct Slab<T> {
    slots: Vec<Option<T>>,
    /// The generation of each slot's current (or last) value.
    generations: Vec<u32>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            slots: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    /// Puts `value` in a free slot (a new one if none is free).
    pub fn insert(&mut self, value: T) -> Key {
        let index = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.generations.push(0);
            (self.slots.len() - 1) as u32
        });
        let i = index as usize;
        self.generations[i] = self.generations[i].wrapping_add(1);
        self.slots[i] = Some(value);
        self.len += 1;
        Key {
            index,
            generation: self.generations[i],
        }
    }

    fn current(&self, key: Key) -> bool {
        self.generations.get(key.index as usize) == Some(&key.generation)
    }

    /// The value of `key`, unless it was removed.
    pub fn get(&self, key: Key) -> Option<&T> {
        if !self.current(key) {
            return None;
        }
        self.slots[key.index as usize].as_ref()
    }

    pub fn get_mut(&mut self, key: Key) -> Option<&mut T> {
        if !self.current(key) {
            return None;
        }
        self.slots[key.index as usize].as_mut()
    }

    /// Takes the value of `key` out; its slot is free again.
    pub fn remove(&mut self, key: Key) -> Option<T> {
        if !self.current(key) {
            return None;
        }
        let value = self.slots[key.index as usize].take()?;
        self.free.push(key.index);
        self.len -= 1;
        Some(value)
    }

    /// How many values there are.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every value with its key, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (Key, &T)> {
        self.slots.iter().enumerate().filter_map(|(i, v)| {
            v.as_ref().map(|v| {
                let key = Key {
                    index: i as u32,
                    generation: self.generations[i],
                };
                (key, v)
            })
        })
    }

    /// Every value.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().flatten()
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.slots.iter_mut().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_keys_reach_nothing() {
        let mut s = Slab::default();
        let a = s.insert("a");
        let b = s.insert("b");
        assert_eq!((s.get(a), s.len()), (Some(&"a"), 2));
        assert_eq!(s.remove(a), Some("a"));
        assert_eq!(s.remove(a), None);
        // The slot is reused under a new generation: the old key does not reach it.
        let c = s.insert("c");
        assert_eq!(c.index(), a.index());
        assert_eq!((s.get(a), s.get(c)), (None, Some(&"c")));
        assert_eq!(Key::from_u64(c.to_u64()), c);
        let keys: Vec<Key> = s.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, [c, b]);
        *s.get_mut(b).unwrap() = "B";
        assert_eq!(s.values().copied().collect::<Vec<_>>(), ["c", "B"]);
        assert!(s.get_mut(a).is_none());
    }
}
