//! `sessions`: per user, each session's orders and revenue (the host merges session windows).

use flumen_sdk::NoParams;
use flumen_sdk::aggregate::{Aggregate, Window};
use orders_model::{Session, ValidOrder};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    pub orders: i64,
    pub revenue_cents: i64,
}

pub struct UserSessions;

#[flumen_sdk::aggregate]
impl Aggregate for UserSessions {
    type Input<'a> = ValidOrder<'a>;
    type Acc = Activity;
    type Output = Session;
    type Params = NoParams;

    fn new(_: NoParams) -> Result<Self, String> {
        Ok(UserSessions)
    }

    fn create(&self) -> Activity {
        Activity::default()
    }

    fn add(&self, acc: &mut Activity, order: &ValidOrder<'_>) {
        acc.orders += 1;
        acc.revenue_cents += order.amount_cents;
    }

    fn merge(&self, acc: &mut Activity, other: Activity) {
        acc.orders += other.orders;
        acc.revenue_cents += other.revenue_cents;
    }

    fn finish(&self, user: &str, window: Window, acc: Activity) -> Option<Session> {
        Some(Session {
            user_id: user.parse().ok()?,
            window_start: window.start,
            window_end: window.end,
            orders: acc.orders,
            revenue_cents: acc.revenue_cents,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_reads_the_user_from_the_key() {
        let acc = Activity {
            orders: 2,
            revenue_cents: 10,
        };
        let s = UserSessions
            .finish("42", Window { start: 1, end: 2 }, acc)
            .unwrap();
        assert_eq!((s.user_id, s.orders, s.revenue_cents), (42, 2, 10));
        assert!(
            UserSessions
                .finish("", Window { start: 1, end: 2 }, acc)
                .is_none()
        );
    }
}
