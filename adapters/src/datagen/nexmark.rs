//! The Nexmark benchmark's event stream (an online auction site): persons, auctions and bids.
//!
//! Event `n` is a person, an auction or a bid by the standard proportions 1 : 3 : 46 (out of
//! 50). Ids, prices and references are pure functions of `(seed, n)`, so three sources — one per
//! table — agree: every auction's seller is a person generated earlier, every bid refers to an
//! auction and a bidder that already exist, and bids concentrate on "hot" auctions and bidders
//! as in the reference generator. Event time advances by `1000 / events_per_second` ms per event.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::generate::{cast_to, mix};
use crate::connector::Split;
use crate::{ConnectorError, Result};

const PERSON_PROPORTION: u64 = 1;
const AUCTION_PROPORTION: u64 = 3;
const TOTAL_PROPORTION: u64 = 50;
const FIRST_PERSON_ID: i64 = 1000;
const FIRST_AUCTION_ID: i64 = 1000;
const FIRST_CATEGORY_ID: i64 = 10;
const NUM_CATEGORIES: u64 = 5;
const ACTIVE_PEOPLE: u64 = 1000;
const IN_FLIGHT_AUCTIONS: u64 = 100;
const HOT_AUCTION_RATIO: u64 = 2;
const HOT_BIDDER_RATIO: u64 = 4;
const HOT_SELLER_RATIO: u64 = 4;
const PERSON_ID_LEAD: u64 = 10;

const FIRST_NAMES: &[&str] =
    &["Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter"];
const LAST_NAMES: &[&str] = &["Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris"];
const CITIES: &[&str] =
    &["Phoenix", "Los Angeles", "San Francisco", "Boise", "Portland", "Bend", "Redmond", "Seattle", "Kent", "Cheyenne"];
const STATES: &[&str] = &["AZ", "CA", "ID", "OR", "WA", "WY"];
const CHANNELS: &[&str] = &["Google", "Facebook", "Baidu", "Apple"];

/// Which Nexmark table a source produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    /// New users.
    Person,
    /// New auctions.
    Auction,
    /// Bids on auctions.
    Bid,
}

impl Table {
    /// Parses `person`, `auction` or `bid` (plurals accepted).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().trim_end_matches('s') {
            "person" => Some(Table::Person),
            "auction" => Some(Table::Auction),
            "bid" => Some(Table::Bid),
            _ => None,
        }
    }

    /// The full schema of the table.
    pub fn schema(self) -> SchemaRef {
        let ts = || DataType::Timestamp(TimeUnit::Millisecond, None);
        let f = |n: &str, t: DataType| Field::new(n, t, false);
        Arc::new(Schema::new(match self {
            Table::Person => vec![
                f("id", DataType::Int64),
                f("name", DataType::Utf8),
                f("email_address", DataType::Utf8),
                f("credit_card", DataType::Utf8),
                f("city", DataType::Utf8),
                f("state", DataType::Utf8),
                f("date_time", ts()),
                f("extra", DataType::Utf8),
            ],
            Table::Auction => vec![
                f("id", DataType::Int64),
                f("item_name", DataType::Utf8),
                f("description", DataType::Utf8),
                f("initial_bid", DataType::Int64),
                f("reserve", DataType::Int64),
                f("date_time", ts()),
                f("expires", ts()),
                f("seller", DataType::Int64),
                f("category", DataType::Int64),
                f("extra", DataType::Utf8),
            ],
            Table::Bid => vec![
                f("auction", DataType::Int64),
                f("bidder", DataType::Int64),
                f("price", DataType::Int64),
                f("channel", DataType::Utf8),
                f("url", DataType::Utf8),
                f("date_time", ts()),
                f("extra", DataType::Utf8),
            ],
        }))
    }

    fn is(self, n: u64) -> bool {
        let off = n % TOTAL_PROPORTION;
        match self {
            Table::Person => off < PERSON_PROPORTION,
            Table::Auction => (PERSON_PROPORTION..PERSON_PROPORTION + AUCTION_PROPORTION).contains(&off),
            Table::Bid => off >= PERSON_PROPORTION + AUCTION_PROPORTION,
        }
    }
}

fn last_base0_person(n: u64) -> u64 {
    // Persons come first in each group of TOTAL_PROPORTION events.
    let off = n % TOTAL_PROPORTION;
    (n / TOTAL_PROPORTION) * PERSON_PROPORTION + off.min(PERSON_PROPORTION) - u64::from(off >= PERSON_PROPORTION)
}

fn last_base0_auction(n: u64) -> u64 {
    let (mut epoch, mut off) = (n / TOTAL_PROPORTION, n % TOTAL_PROPORTION);
    if off < PERSON_PROPORTION {
        // Before this epoch's first auction: the last auction of the previous epoch.
        if epoch == 0 {
            return 0;
        }
        epoch -= 1;
        off = AUCTION_PROPORTION - 1;
    } else if off >= PERSON_PROPORTION + AUCTION_PROPORTION {
        off = AUCTION_PROPORTION - 1;
    } else {
        off -= PERSON_PROPORTION;
    }
    epoch * AUCTION_PROPORTION + off
}

fn next_base0_person(n: u64, h: u64) -> u64 {
    let num = last_base0_person(n) + 1;
    let active = num.min(ACTIVE_PEOPLE);
    num - active + h % (active + PERSON_ID_LEAD).max(1)
}

fn next_base0_auction(n: u64, h: u64) -> u64 {
    let max = last_base0_auction(n);
    let min = max.saturating_sub(IN_FLIGHT_AUCTIONS);
    min + h % (max - min + 1)
}

fn word(h: u64, len: usize) -> String {
    let mut x = h;
    (0..len)
        .map(|_| {
            let c = (b'a' + (x % 26) as u8) as char;
            x = mix(x);
            c
        })
        .collect()
}

fn price(h: u64) -> i64 {
    // Roughly log-uniform between 1 and 10^6 cents.
    (10f64.powf((h % 1_000_000) as f64 / 1_000_000.0 * 6.0) * 100.0) as i64
}

/// Generates one Nexmark table.
pub struct NexmarkGen {
    table: Table,
    seed: u64,
    /// Event time of event `n`: `base + n * step`.
    pub step_ms: f64,
    /// The events this generator produces (by event number).
    split: Split,
}

impl NexmarkGen {
    /// A generator of `table` events at `events_per_second` (0: 1 ms apart in event time).
    pub fn new(table: Table, seed: u64, events_per_second: u64) -> Self {
        let step_ms = if events_per_second == 0 { 1.0 } else { 1000.0 / events_per_second as f64 };
        Self { table, seed, step_ms, split: Split::WHOLE }
    }

    /// Produces only the events of `split` (numbered over the whole stream).
    pub fn with_split(mut self, split: Split) -> Self {
        self.split = split;
        self
    }

    /// The table generated.
    pub fn table(&self) -> Table {
        self.table
    }

    /// Generates the rows of this table among events `first .. first + n`, projected onto
    /// `schema` (a subset of the table's columns, by name, castable types).
    pub fn generate(&self, schema: &SchemaRef, first: u64, n: u64, base_ms: i64) -> Result<RecordBatch> {
        let events: Vec<u64> = (first..first + n).filter(|e| self.table.is(*e) && self.split.owns(*e)).collect();
        let hash = |e: u64, k: u64| mix(self.seed ^ mix(e.wrapping_mul(31).wrapping_add(k)));
        let time = |e: u64| base_ms + (self.step_ms * e as f64) as i64;
        let ints = |f: &dyn Fn(u64) -> i64| -> ArrayRef {
            Arc::new(Int64Array::from_iter_values(events.iter().map(|e| f(*e))))
        };
        let strs = |f: &dyn Fn(u64) -> String| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(events.iter().map(|e| f(*e))))
        };
        let pick = |xs: &'static [&'static str], h: u64| xs[(h % xs.len() as u64) as usize];
        let mut cols = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let name = field.name().as_str();
            let col: ArrayRef = match (self.table, name) {
                (Table::Person, "id") => ints(&|e| FIRST_PERSON_ID + last_base0_person(e) as i64),
                (Table::Person, "name") => {
                    strs(&|e| format!("{} {}", pick(FIRST_NAMES, hash(e, 1)), pick(LAST_NAMES, hash(e, 2))))
                }
                (Table::Person, "email_address") => {
                    strs(&|e| format!("{}@{}.com", word(hash(e, 3), 7), word(hash(e, 4), 5)))
                }
                (Table::Person, "credit_card") => strs(&|e| {
                    let h = hash(e, 5);
                    format!(
                        "{:04} {:04} {:04} {:04}",
                        h % 10_000,
                        (h >> 16) % 10_000,
                        (h >> 32) % 10_000,
                        (h >> 48) % 10_000
                    )
                }),
                (Table::Person, "city") => strs(&|e| pick(CITIES, hash(e, 6)).to_string()),
                (Table::Person, "state") => strs(&|e| pick(STATES, hash(e, 7)).to_string()),
                (Table::Auction, "id") => ints(&|e| FIRST_AUCTION_ID + last_base0_auction(e) as i64),
                (Table::Auction, "item_name") => strs(&|e| word(hash(e, 1), 8)),
                (Table::Auction, "description") => strs(&|e| word(hash(e, 2), 20)),
                (Table::Auction, "initial_bid") => ints(&|e| price(hash(e, 3))),
                (Table::Auction, "reserve") => ints(&|e| price(hash(e, 3)) + price(hash(e, 4))),
                (Table::Auction, "expires") => ints(&|e| time(e) + 10_000 + (hash(e, 5) % 20_000) as i64),
                (Table::Auction, "seller") => ints(&|e| {
                    let h = hash(e, 6);
                    let b = if h % HOT_SELLER_RATIO > 0 {
                        (last_base0_person(e) / HOT_SELLER_RATIO) * HOT_SELLER_RATIO
                    } else {
                        next_base0_person(e, h >> 8)
                    };
                    FIRST_PERSON_ID + b as i64
                }),
                (Table::Auction, "category") => ints(&|e| FIRST_CATEGORY_ID + (hash(e, 7) % NUM_CATEGORIES) as i64),
                (Table::Bid, "auction") => ints(&|e| {
                    let h = hash(e, 1);
                    let b = if h % HOT_AUCTION_RATIO > 0 {
                        (last_base0_auction(e) / HOT_AUCTION_RATIO) * HOT_AUCTION_RATIO
                    } else {
                        next_base0_auction(e, h >> 8)
                    };
                    FIRST_AUCTION_ID + b as i64
                }),
                (Table::Bid, "bidder") => ints(&|e| {
                    let h = hash(e, 2);
                    let b = if h % HOT_BIDDER_RATIO > 0 {
                        (last_base0_person(e) / HOT_BIDDER_RATIO) * HOT_BIDDER_RATIO + 1
                    } else {
                        next_base0_person(e, h >> 8)
                    };
                    FIRST_PERSON_ID + b as i64
                }),
                (Table::Bid, "price") => ints(&|e| price(hash(e, 3))),
                (Table::Bid, "channel") => strs(&|e| pick(CHANNELS, hash(e, 4)).to_string()),
                (Table::Bid, "url") => {
                    strs(&|e| format!("https://www.nexmark.com/{}/item.htm?query=1", word(hash(e, 5), 5)))
                }
                (_, "date_time") => ints(&time),
                (_, "extra") => strs(&|_| String::new()),
                _ => {
                    return Err(ConnectorError::Config(format!(
                        "the Nexmark {:?} table has no column '{name}' (columns: {})",
                        self.table,
                        self.table.schema().fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ")
                    )))
                }
            };
            let dt = field.data_type();
            cols.push(cast_to(&col, dt)?);
        }
        Ok(RecordBatch::try_new_with_options(
            schema.clone(),
            cols,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(events.len())),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;

    use super::*;

    #[test]
    fn bids_refer_to_existing_auctions_and_people() {
        let g = |t| NexmarkGen::new(t, 7, 10_000);
        let n = 5_000;
        let persons = g(Table::Person).generate(&Table::Person.schema(), 0, n, 0).expect("p");
        let auctions = g(Table::Auction).generate(&Table::Auction.schema(), 0, n, 0).expect("a");
        let bids = g(Table::Bid).generate(&Table::Bid.schema(), 0, n, 0).expect("b");
        assert_eq!(persons.num_rows() + auctions.num_rows() + bids.num_rows(), n as usize);
        assert_eq!(persons.num_rows(), 100);
        assert_eq!(auctions.num_rows(), 300);
        let max_person = persons.column(0).as_primitive::<Int64Type>().values().iter().max().copied().expect("max");
        let max_auction = auctions.column(0).as_primitive::<Int64Type>().values().iter().max().copied().expect("max");
        let sellers = auctions.column_by_name("seller").expect("seller").as_primitive::<Int64Type>();
        assert!(sellers.values().iter().all(|s| *s >= FIRST_PERSON_ID && *s <= max_person + PERSON_ID_LEAD as i64));
        let bid_auctions = bids.column(0).as_primitive::<Int64Type>();
        assert!(bid_auctions.values().iter().all(|a| *a >= FIRST_AUCTION_ID && *a <= max_auction));
        // Same seed, same rows; a narrower schema is a projection.
        let again = g(Table::Bid).generate(&Table::Bid.schema(), 0, n, 0).expect("b");
        assert_eq!(bids, again);
        let narrow = Arc::new(Schema::new(vec![Field::new("price", DataType::Int64, false)]));
        let p = g(Table::Bid).generate(&narrow, 0, n, 0).expect("b");
        assert_eq!(p.column(0), bids.column(2));
        assert!(g(Table::Bid)
            .generate(&Arc::new(Schema::new(vec![Field::new("nope", DataType::Int64, false)])), 0, 10, 0)
            .is_err());
    }
}
