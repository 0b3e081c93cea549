//! Nexmark's seeded event generator, after the reference generator of the Nexmark suite (Apache
//! Beam's and Flink's `NexmarkGenerator`, default configuration): event `n` is a person, an
//! auction or a bid by `n mod 50` (1 : 3 : 46); a bid goes to the newest "hot" auction half the
//! time (else to one of the 100 auctions in flight) and comes from a hot bidder three times in
//! four (else from one of the 1,000 active people); prices are log-uniform from $1 to $1 M (in
//! cents); half the bids come through one of four hot channels. Event time advances evenly,
//! [`EVENTS_PER_SECOND`] events a second from [`FIRST_TS`]. The same seed gives the same events
//! on every machine.
//!
//! Events are written straight into bincode (`flumen_sdk::abi::BINCODE`, the encoding between
//! stages), from borrowed strings: drawing an event allocates nothing.

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use serde::Serialize;
use std::fmt::Write as _;

/// Event time of event 0: 2023-11-14T22:13:20Z.
pub const FIRST_TS: i64 = 1_700_000_000_000;
/// Events a second of event time (10 µs apart).
pub const EVENTS_PER_SECOND: i64 = 100_000;

const PERSON_PROPORTION: u64 = 1;
const AUCTION_PROPORTION: u64 = 3;
const TOTAL_PROPORTION: u64 = 50;
const FIRST_PERSON_ID: i64 = 1000;
const FIRST_AUCTION_ID: i64 = 1000;
const FIRST_CATEGORY_ID: i64 = 10;
const NUM_CATEGORIES: i64 = 5;
const NUM_ACTIVE_PEOPLE: i64 = 1000;
const NUM_IN_FLIGHT_AUCTIONS: i64 = 100;
const PERSON_ID_LEAD: i64 = 10;
const AUCTION_ID_LEAD: i64 = 10;
const HOT_AUCTION_RATIO: u32 = 2;
const HOT_BIDDER_RATIO: u32 = 4;
const HOT_SELLER_RATIO: u32 = 4;
const HOT_CHANNELS_RATIO: u32 = 2;
const CHANNELS: u32 = 10_000;
const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
const AVG_PERSON_BYTES: usize = 200;
const AVG_AUCTION_BYTES: usize = 500;
const AVG_BID_BYTES: usize = 100;
const FIRST_NAMES: [&str; 11] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
const LAST_NAMES: [&str; 9] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];
const CITIES: [&str; 10] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
const STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];

/// Which kind of event was drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Person,
    Auction,
    Bid,
}

/// What the source needs of a drawn event besides its bytes: its event time and the integer
/// fields a stage may key it by.
#[derive(Debug, Clone, Copy)]
pub struct Drawn {
    pub kind: Kind,
    pub ts: i64,
    fields: [(&'static str, i64); 3],
}

impl Drawn {
    /// The integer field `name` of the event (`auction`, `bidder`, `price` of a bid; `id`,
    /// `seller`, `category` of an auction; `id` of a person).
    pub fn field(&self, name: &str) -> Option<i64> {
        self.fields.iter().find(|(n, _)| *n == name).map(|f| f.1)
    }
}

// The encoding of `crate::Event` from borrowed parts: same variants in the same order, same
// fields, so the bytes decode as an `Event`.
#[derive(Serialize)]
enum EventRef<'a> {
    Person(PersonRef<'a>),
    Auction(AuctionRef<'a>),
    Bid(BidRef<'a>),
}

#[derive(Serialize)]
struct PersonRef<'a> {
    id: i64,
    name: &'a str,
    email_address: &'a str,
    credit_card: &'a str,
    city: &'a str,
    state: &'a str,
    date_time: i64,
    extra: &'a str,
}

#[derive(Serialize)]
struct AuctionRef<'a> {
    id: i64,
    item_name: &'a str,
    description: &'a str,
    initial_bid: i64,
    reserve: i64,
    date_time: i64,
    expires: i64,
    seller: i64,
    category: i64,
    extra: &'a str,
}

#[derive(Serialize)]
struct BidRef<'a> {
    auction: i64,
    bidder: i64,
    price: i64,
    channel: &'a str,
    url: &'a str,
    date_time: i64,
    extra: &'a str,
}

/// The generator of one seed; [`Generator::next_into`] draws the next event.
pub struct Generator {
    rng: Pcg64Mcg,
    /// The number of the next event.
    next: u64,
    /// Random text that strings are cut from.
    text: String,
    /// The hot channels' URLs.
    hot_urls: [String; 4],
    /// Scratch for a person's formatted fields, or a bid's channel and URL.
    scratch: [String; 3],
}

impl Generator {
    /// The generator of seed `seed`.
    pub fn new(seed: u64) -> Generator {
        let mut rng = Pcg64Mcg::seed_from_u64(seed);
        let text: String = (0..4096)
            .map(|_| match rng.random_range(0..27u8) {
                26 => ' ',
                c => char::from(b'a' + c),
            })
            .collect();
        let hot_urls = std::array::from_fn(|_| base_url(&text, &mut rng));
        Generator {
            rng,
            next: 0,
            text,
            hot_urls,
            scratch: Default::default(),
        }
    }

    /// How many events were drawn.
    pub fn drawn(&self) -> u64 {
        self.next
    }

    /// Skips `n` events (drawing them: the sequence depends on every draw).
    pub fn skip(&mut self, n: u64) {
        let mut sink = Vec::new();
        for _ in 0..n {
            sink.clear();
            self.next_into(&mut sink);
        }
    }

    /// Draws the next event and appends its bincode encoding to `out`.
    pub fn next_into(&mut self, out: &mut Vec<u8>) -> Drawn {
        let n = self.next;
        self.next += 1;
        let ts = FIRST_TS + (n as i64) * 1000 / EVENTS_PER_SECOND;
        let offset = n % TOTAL_PROPORTION;
        if offset < PERSON_PROPORTION {
            self.person(n, ts, out)
        } else if offset < PERSON_PROPORTION + AUCTION_PROPORTION {
            self.auction(n, ts, out)
        } else {
            self.bid(n, ts, out)
        }
    }

    /// Draws the next event as a value (for tests and reference computations; the source uses
    /// [`Generator::next_into`]).
    pub fn next_event(&mut self) -> crate::Event<'static> {
        let mut bytes = Vec::new();
        self.next_into(&mut bytes);
        decode_owned(&bytes).expect("an event's encoding decodes as an Event")
    }

    fn person(&mut self, n: u64, ts: i64, out: &mut Vec<u8>) -> Drawn {
        let id = last_person(n) + FIRST_PERSON_ID;
        let [name, email, card] = &mut self.scratch;
        let rng = &mut self.rng;
        name.clear();
        let _ = write!(
            name,
            "{} {}",
            FIRST_NAMES[rng.random_range(0..FIRST_NAMES.len())],
            LAST_NAMES[rng.random_range(0..LAST_NAMES.len())]
        );
        email.clear();
        let (user, host) = (cut(&self.text, rng, 7), cut(&self.text, rng, 5));
        let _ = write!(email, "{user}@{host}.com");
        card.clear();
        let _ = write!(
            card,
            "{:04} {:04} {:04} {:04}",
            rng.random_range(0..10_000),
            rng.random_range(0..10_000),
            rng.random_range(0..10_000),
            rng.random_range(0..10_000)
        );
        let city = CITIES[rng.random_range(0..CITIES.len())];
        let state = STATES[rng.random_range(0..STATES.len())];
        let size = 8 + name.len() + email.len() + card.len() + city.len() + state.len() + 8;
        let extra = extra(&self.text, rng, size, AVG_PERSON_BYTES);
        encode(
            &EventRef::Person(PersonRef {
                id,
                name,
                email_address: email,
                credit_card: card,
                city,
                state,
                date_time: ts,
                extra,
            }),
            out,
        );
        Drawn {
            kind: Kind::Person,
            ts,
            fields: [("id", id), ("", 0), ("", 0)],
        }
    }

    fn auction(&mut self, n: u64, ts: i64, out: &mut Vec<u8>) -> Drawn {
        let id = last_auction(n) + FIRST_AUCTION_ID;
        let rng = &mut self.rng;
        let seller = FIRST_PERSON_ID
            + match rng.random_ratio(HOT_SELLER_RATIO - 1, HOT_SELLER_RATIO) {
                true => last_person(n) / HOT_SELLER_RATIO as i64 * HOT_SELLER_RATIO as i64,
                false => next_person(n, rng),
            };
        let category = FIRST_CATEGORY_ID + rng.random_range(0..NUM_CATEGORIES);
        let initial_bid = price(rng);
        let reserve = initial_bid + price(rng);
        let expires = ts + rng.random_range(10_000..=600_000);
        let item_name = cut(&self.text, rng, 20);
        let description = cut(&self.text, rng, 100);
        let size = 8 + item_name.len() + description.len() + 8 * 6;
        let extra = extra(&self.text, rng, size, AVG_AUCTION_BYTES);
        encode(
            &EventRef::Auction(AuctionRef {
                id,
                item_name,
                description,
                initial_bid,
                reserve,
                date_time: ts,
                expires,
                seller,
                category,
                extra,
            }),
            out,
        );
        Drawn {
            kind: Kind::Auction,
            ts,
            fields: [("id", id), ("seller", seller), ("category", category)],
        }
    }

    fn bid(&mut self, n: u64, ts: i64, out: &mut Vec<u8>) -> Drawn {
        let rng = &mut self.rng;
        let auction = FIRST_AUCTION_ID
            + match rng.random_ratio(HOT_AUCTION_RATIO - 1, HOT_AUCTION_RATIO) {
                true => last_auction(n) / HOT_AUCTION_RATIO as i64 * HOT_AUCTION_RATIO as i64,
                false => next_auction(n, rng),
            };
        let bidder = FIRST_PERSON_ID
            + match rng.random_ratio(HOT_BIDDER_RATIO - 1, HOT_BIDDER_RATIO) {
                true => last_person(n) / HOT_BIDDER_RATIO as i64 * HOT_BIDDER_RATIO as i64 + 1,
                false => next_person(n, rng),
            };
        let price = price(rng);
        let (channel, url) = match rng.random_ratio(HOT_CHANNELS_RATIO - 1, HOT_CHANNELS_RATIO) {
            true => {
                let hot = rng.random_range(0..HOT_CHANNELS.len());
                (HOT_CHANNELS[hot], self.hot_urls[hot].as_str())
            }
            false => {
                // A channel's URL is made from its number each time rather than cached: a cache
                // of 10,000 URLs misses the CPU caches on most bids (it was most of the
                // generator's time).
                let number = rng.random_range(0..CHANNELS);
                let [channel, url, _] = &mut self.scratch;
                channel.clear();
                let _ = write!(channel, "channel-{number}");
                url.clear();
                channel_url(&self.text, number, url);
                (channel.as_str(), url.as_str())
            }
        };
        let size = 8 * 4 + channel.len() + url.len();
        let extra = extra(&self.text, rng, size, AVG_BID_BYTES);
        encode(
            &EventRef::Bid(BidRef {
                auction,
                bidder,
                price,
                channel,
                url,
                date_time: ts,
                extra,
            }),
            out,
        );
        Drawn {
            kind: Kind::Bid,
            ts,
            fields: [("auction", auction), ("bidder", bidder), ("price", price)],
        }
    }
}

fn encode(event: &EventRef<'_>, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail, and every field here has a size.
    let _ = bincode::serde::encode_into_std_write(event, out, flumen_sdk::abi::BINCODE);
}

/// The newest person's id (from 0) when event `n` is drawn.
fn last_person(n: u64) -> i64 {
    let epoch = n / TOTAL_PROPORTION;
    let offset = match n % TOTAL_PROPORTION {
        offset if offset < PERSON_PROPORTION => offset,
        _ => PERSON_PROPORTION - 1,
    };
    (epoch * PERSON_PROPORTION + offset) as i64
}

/// The newest auction's id (from 0) when event `n` is drawn (-1 before the first).
fn last_auction(n: u64) -> i64 {
    let epoch = (n / TOTAL_PROPORTION) as i64;
    let offset = n % TOTAL_PROPORTION;
    let (epoch, offset) = if offset < PERSON_PROPORTION {
        (epoch - 1, AUCTION_PROPORTION - 1)
    } else if offset >= PERSON_PROPORTION + AUCTION_PROPORTION {
        (epoch, AUCTION_PROPORTION - 1)
    } else {
        (epoch, offset - PERSON_PROPORTION)
    };
    epoch * AUCTION_PROPORTION as i64 + offset as i64
}

/// One of the active people (or one about to join).
fn next_person(n: u64, rng: &mut Pcg64Mcg) -> i64 {
    let people = last_person(n) + 1;
    let active = people.min(NUM_ACTIVE_PEOPLE);
    people - active + rng.random_range(0..active + PERSON_ID_LEAD)
}

/// One of the auctions in flight (or one about to open).
fn next_auction(n: u64, rng: &mut Pcg64Mcg) -> i64 {
    let newest = last_auction(n).max(0);
    let oldest = (newest - NUM_IN_FLIGHT_AUCTIONS).max(0);
    oldest + rng.random_range(0..newest - oldest + 1 + AUCTION_ID_LEAD)
}

/// A price in cents, log-uniform from $1 to $1 M.
fn price(rng: &mut Pcg64Mcg) -> i64 {
    (10f64.powf(rng.random::<f64>() * 6.0) * 100.0).round() as i64
}

/// Random text of 1..=`max` characters.
fn cut<'t>(text: &'t str, rng: &mut Pcg64Mcg, max: usize) -> &'t str {
    let len = rng.random_range(1..=max);
    exact(text, rng, len)
}

/// Random text of `len` characters (at most the text's length).
fn exact<'t>(text: &'t str, rng: &mut Pcg64Mcg, len: usize) -> &'t str {
    let len = len.min(text.len());
    let at = rng.random_range(0..=text.len() - len);
    &text[at..at + len]
}

/// Padding that brings an event of `size` bytes to `average` on average, ± 20 %.
fn extra<'t>(text: &'t str, rng: &mut Pcg64Mcg, size: usize, average: usize) -> &'t str {
    if size >= average {
        return "";
    }
    let wanted = average - size;
    let delta = wanted / 5;
    let len = wanted - delta + rng.random_range(0..=2 * delta);
    exact(text, rng, len)
}

/// The URL of channel `number`: the same for every bid through it.
/// The event at the front of `bytes`, decoded into owned strings.
fn decode_owned(bytes: &[u8]) -> Result<crate::Event<'static>, bincode::error::DecodeError> {
    use serde::Deserialize;
    let reader = bincode::de::read::SliceReader::new(bytes);
    let mut decoder =
        bincode::serde::OwnedSerdeDecoder::from_reader(reader, flumen_sdk::abi::BINCODE);
    crate::Event::deserialize(decoder.as_deserializer())
}

fn channel_url(text: &str, number: u32, url: &mut String) {
    // Three path segments of 1..=5 characters cut from the text where the number's hash says.
    let mut hash = u64::from(number).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    url.push_str("https://www.nexmark.com/");
    for _ in 0..3 {
        hash ^= hash >> 29;
        hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        let len = 1 + (hash % 5) as usize;
        let at = (hash >> 8) as usize % (text.len() - len);
        url.push_str(&text[at..at + len]);
        url.push('/');
    }
    let _ = write!(url, "item.htm?query=1&channel_id={}", number.reverse_bits());
}

fn base_url(text: &str, rng: &mut Pcg64Mcg) -> String {
    format!(
        "https://www.nexmark.com/{}/{}/{}/item.htm?query=1",
        cut(text, rng, 5),
        cut(text, rng, 5),
        cut(text, rng, 5)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Event;

    fn events(seed: u64, count: usize) -> Vec<Event<'static>> {
        let mut generator = Generator::new(seed);
        let mut bytes = Vec::new();
        (0..count)
            .map(|_| {
                bytes.clear();
                let drawn = generator.next_into(&mut bytes);
                let event = decode_owned(&bytes).expect("decodes as an Event");
                // Exactly an `Event`'s encoding, nothing more.
                let encoded = bincode::serde::encode_to_vec(&event, flumen_sdk::abi::BINCODE);
                assert_eq!(encoded.expect("encodes"), bytes);
                let (ts, kind) = match &event {
                    Event::Person(p) => (p.date_time, Kind::Person),
                    Event::Auction(a) => (a.date_time, Kind::Auction),
                    Event::Bid(b) => {
                        assert_eq!(drawn.field("auction"), Some(b.auction));
                        assert_eq!(drawn.field("price"), Some(b.price));
                        (b.date_time, Kind::Bid)
                    }
                };
                assert_eq!((drawn.ts, drawn.kind), (ts, kind));
                event
            })
            .collect()
    }

    #[test]
    fn the_stream_is_one_person_three_auctions_and_46_bids_in_50() {
        let all = events(1, 5000);
        let count = |f: fn(&Event) -> bool| all.iter().filter(|e| f(e)).count();
        assert_eq!(count(|e| matches!(e, Event::Person(_))), 100);
        assert_eq!(count(|e| matches!(e, Event::Auction(_))), 300);
        assert_eq!(count(|e| matches!(e, Event::Bid(_))), 4600);
        // Event time: 100 events a millisecond, in order.
        let Event::Bid(last) = &all[4999] else {
            panic!("event 4999 is a bid")
        };
        assert_eq!(last.date_time, FIRST_TS + 49);
    }

    #[test]
    fn bids_go_to_auctions_and_bidders_that_exist_or_are_about_to() {
        let all = events(2, 20_000);
        let mut newest_auction = FIRST_AUCTION_ID - 1;
        let mut newest_person = FIRST_PERSON_ID - 1;
        let mut hot = 0;
        let mut urls = std::collections::HashMap::new();
        for event in &all {
            match event {
                Event::Person(p) => newest_person = p.id,
                Event::Auction(a) => {
                    newest_auction = a.id;
                    assert!(a.seller <= newest_person + PERSON_ID_LEAD);
                    assert!((10..15).contains(&a.category));
                    assert!(a.reserve > a.initial_bid && a.expires > a.date_time);
                }
                Event::Bid(b) => {
                    assert!(b.auction <= newest_auction + AUCTION_ID_LEAD, "{b:?}");
                    assert!(
                        b.auction >= newest_auction - NUM_IN_FLIGHT_AUCTIONS - 1,
                        "{b:?}"
                    );
                    assert!(b.bidder <= newest_person + PERSON_ID_LEAD);
                    assert!((100..=100_000_000).contains(&b.price), "{}", b.price);
                    assert!(b.url.starts_with("https://www.nexmark.com/"));
                    hot += usize::from(HOT_CHANNELS.contains(&b.channel.as_ref()));
                    // A channel keeps its URL.
                    let url = urls
                        .entry(b.channel.clone())
                        .or_insert_with(|| b.url.clone());
                    assert_eq!(*url, b.url, "{}", b.channel);
                }
            }
        }
        // Half of the bids come through a hot channel; the others through thousands.
        assert!((8_000..10_400).contains(&hot), "{hot}");
        assert!(urls.len() > 5_000, "{} channels", urls.len());
    }

    #[test]
    fn the_same_seed_gives_the_same_events_and_skip_resumes() {
        assert_eq!(events(3, 500), events(3, 500));
        assert_ne!(events(3, 500), events(4, 500));
        let mut skipped = Generator::new(3);
        skipped.skip(200);
        let mut bytes = Vec::new();
        skipped.next_into(&mut bytes);
        let mut straight = Generator::new(3);
        let mut expected = Vec::new();
        for _ in 0..=200 {
            expected.clear();
            straight.next_into(&mut expected);
        }
        assert_eq!(bytes, expected);
        assert_eq!(skipped.drawn(), 201);
    }
}
