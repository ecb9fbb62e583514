//! The value every scenario caches: a placement, about 260 bytes of JSON.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    pub id: String,
    pub video_id: String,
    pub product_id: String,
    pub label: String,
    pub start_ms: u64,
    pub end_ms: u64,
    pub x: f32,
    pub y: f32,
    pub active: bool,
    pub version: u64,
    pub created_at: String,
}

impl Placement {
    pub fn sample(id: u64) -> Placement {
        Placement {
            id: format!("550e8400-e29b-41d4-a716-{id:012}"),
            video_id: "6ba7b810-9dad-11d1-80b4-00c04fd430c8".into(),
            product_id: "prod-7f3a9c21".into(),
            label: "Sneakers on the left shelf".into(),
            start_ms: 12_500,
            end_ms: 19_750,
            x: 0.42,
            y: 0.17,
            active: true,
            version: 3,
            created_at: "2026-11-25T03:22:00Z".into(),
        }
    }
}

/// The size the scenarios report, so the "~260-byte" claim is checked.
pub fn json_len() -> usize {
    serde_json::to_vec(&Placement::sample(1))
        .map(|v| v.len())
        .unwrap_or(0)
}
