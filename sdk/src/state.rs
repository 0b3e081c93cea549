//! Keyed state: what a `process` operator remembers per key between records.
//!
//! The state is owned by the host, per operator and per key, so that a swapped module keeps it
//! and a checkpoint can capture it. For each batch the host lends the guest the state of every
//! key in the batch; the SDK decodes each once, hands the function a typed handle for the
//! record's key, and returns only what changed — no host call per record.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;

/// A kind of keyed state a `process` function can take as `&mut` (after its input).
pub trait KeyedState: Default + Clone + 'static {
    /// The type name reported to the host (for the compatibility check on reload).
    fn type_name() -> String;
    /// Decodes the state the host holds for a key (`None`: the key has none yet).
    fn load(bytes: Option<&[u8]>) -> Result<Self, String>;
    /// Whether the state changed since it was loaded.
    fn is_dirty(&self) -> bool;
    /// Encodes the state into `buf`; `false` means the key has no state any more.
    fn save(&self, buf: &mut Vec<u8>) -> Result<bool, String>;
}

/// The state of an operator that keeps none.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoState;

impl KeyedState for NoState {
    fn type_name() -> String {
        "()".into()
    }
    fn load(_: Option<&[u8]>) -> Result<Self, String> {
        Ok(NoState)
    }
    fn is_dirty(&self) -> bool {
        false
    }
    fn save(&self, _: &mut Vec<u8>) -> Result<bool, String> {
        Ok(false)
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    crate::codec::decode(crate::abi::Encoding::Bincode, bytes, false)
        .map_err(|e| format!("cannot decode the stored state: {e}"))
}

fn encode<T: Serialize>(value: &T, buf: &mut Vec<u8>) -> Result<(), String> {
    crate::codec::encode_into(crate::abi::Encoding::Bincode, value, buf)
}

/// One value per key.
///
/// ```
/// use flumen_sdk::state::ValueState;
///
/// let mut remaining: ValueState<i64> = ValueState::default();
/// assert_eq!(remaining.get(), None);
/// *remaining.get_or_insert_with(|| 40) -= 3;
/// assert_eq!(remaining.get(), Some(&37));
/// remaining.clear();
/// assert!(remaining.get().is_none());
/// ```
#[derive(Debug, Clone)]
pub struct ValueState<T> {
    value: Option<T>,
    dirty: bool,
}

impl<T> Default for ValueState<T> {
    fn default() -> Self {
        ValueState {
            value: None,
            dirty: false,
        }
    }
}

impl<T> ValueState<T> {
    /// The value, if the key has one.
    pub fn get(&self) -> Option<&T> {
        self.value.as_ref()
    }

    /// The value for changing in place, if the key has one.
    pub fn get_mut(&mut self) -> Option<&mut T> {
        self.dirty = true;
        self.value.as_mut()
    }

    /// The value, first set to `init()` if the key has none.
    pub fn get_or_insert_with(&mut self, init: impl FnOnce() -> T) -> &mut T {
        self.dirty = true;
        self.value.get_or_insert_with(init)
    }

    /// Sets the value.
    pub fn set(&mut self, value: T) {
        self.dirty = true;
        self.value = Some(value);
    }

    /// Forgets the value.
    pub fn clear(&mut self) {
        self.dirty = true;
        self.value = None;
    }
}

impl<T: Serialize + DeserializeOwned + Clone + 'static> KeyedState for ValueState<T> {
    fn type_name() -> String {
        format!("ValueState<{}>", crate::type_name::<T>())
    }
    fn load(bytes: Option<&[u8]>) -> Result<Self, String> {
        Ok(ValueState {
            value: bytes.map(decode).transpose()?,
            dirty: false,
        })
    }
    fn is_dirty(&self) -> bool {
        self.dirty
    }
    fn save(&self, buf: &mut Vec<u8>) -> Result<bool, String> {
        match &self.value {
            Some(value) => encode(value, buf).map(|()| true),
            None => Ok(false),
        }
    }
}

/// A sorted map per key.
///
/// ```
/// use flumen_sdk::state::MapState;
///
/// let mut units: MapState<String, i64> = MapState::default();
/// units.insert("SKU-0001".into(), 3);
/// *units.entry("SKU-0001".into()).or_default() += 2;
/// assert_eq!(units.get(&"SKU-0001".to_string()), Some(&5));
/// units.retain(|_, v| *v > 10);
/// assert!(units.is_empty());
/// ```
#[derive(Debug, Clone)]
pub struct MapState<K, V> {
    map: BTreeMap<K, V>,
    dirty: bool,
}

impl<K, V> Default for MapState<K, V> {
    fn default() -> Self {
        MapState {
            map: BTreeMap::new(),
            dirty: false,
        }
    }
}

impl<K: Ord, V> MapState<K, V> {
    /// The value under `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key)
    }

    /// Sets the value under `key`, returning the previous one.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.dirty = true;
        self.map.insert(key, value)
    }

    /// Removes the value under `key`.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.dirty = true;
        self.map.remove(key)
    }

    /// The entry under `key`, for in-place changes.
    pub fn entry(&mut self, key: K) -> std::collections::btree_map::Entry<'_, K, V> {
        self.dirty = true;
        self.map.entry(key)
    }

    /// Keeps only the entries `keep` says yes to.
    pub fn retain(&mut self, keep: impl FnMut(&K, &mut V) -> bool) {
        self.dirty = true;
        self.map.retain(keep);
    }

    /// The entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.map.iter()
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl<K, V> KeyedState for MapState<K, V>
where
    K: Ord + Serialize + DeserializeOwned + Clone + 'static,
    V: Serialize + DeserializeOwned + Clone + 'static,
{
    fn type_name() -> String {
        format!(
            "MapState<{}, {}>",
            crate::type_name::<K>(),
            crate::type_name::<V>()
        )
    }
    fn load(bytes: Option<&[u8]>) -> Result<Self, String> {
        Ok(MapState {
            map: bytes.map(decode).transpose()?.unwrap_or_default(),
            dirty: false,
        })
    }
    fn is_dirty(&self) -> bool {
        self.dirty
    }
    fn save(&self, buf: &mut Vec<u8>) -> Result<bool, String> {
        if self.map.is_empty() {
            return Ok(false);
        }
        encode(&self.map, buf).map(|()| true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<S: KeyedState>(state: &S) -> Option<S> {
        let mut buf = Vec::new();
        state
            .save(&mut buf)
            .unwrap()
            .then(|| S::load(Some(&buf)).unwrap())
    }

    #[test]
    fn value_state_round_trips_and_tracks_changes() {
        let mut state = ValueState::<(i64, String)>::load(None).unwrap();
        assert!(!state.is_dirty());
        assert!(round_trip(&state).is_none());
        state.set((3, "FR".into()));
        assert!(state.is_dirty());
        let back = round_trip(&state).unwrap();
        assert_eq!(back.get(), Some(&(3, "FR".to_string())));
        assert!(!back.is_dirty());
    }

    #[test]
    fn map_state_round_trips_and_empties_to_nothing() {
        let mut state = MapState::<String, i64>::default();
        state.insert("a".into(), 1);
        state.insert("b".into(), 2);
        let back = round_trip(&state).unwrap();
        assert_eq!(
            back.iter().collect::<Vec<_>>(),
            vec![(&"a".to_string(), &1), (&"b".to_string(), &2)]
        );
        state.retain(|_, _| false);
        assert!(round_trip(&state).is_none());
    }

    #[test]
    fn corrupt_state_is_an_error() {
        assert!(ValueState::<String>::load(Some(&[255, 255, 255])).is_err());
    }
}
