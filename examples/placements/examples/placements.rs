//! The placement service.
//!
//! ```text
//! cargo run --release --example placements                       # SQLite file, memory cache
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --release --example placements
//! DATABASE_URL=postgres://user:pass@127.0.0.1/db cargo run --release --example placements
//! cargo run --release --example placements -- --listen 127.0.0.1:9000 [--no-cache]
//! ```

use cached_placements::{Config, start};

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match Config::from_args_and_env(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let running = match start(&config).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start: {e}");
            std::process::exit(1);
        }
    };
    let url = running.url();
    let cache = &running.service.cache;
    println!(
        "placements on {url}\n  database: {} ({})\n  cache:    {}{}",
        running.service.db().kind(),
        config.database_url,
        cache.backend_kind(),
        if config.bypass {
            " (bypassed: --no-cache)"
        } else {
            ""
        },
    );
    println!(
        "\ntry:\n  \
         curl -i {url}/placements/1                      # a miss, then hits (ETag, Cache-Control)\n  \
         curl -i -H 'If-None-Match: \"1\"' {url}/placements/1   # 304 Not Modified\n  \
         curl -i -X PUT -H 'content-type: application/json' -d '{{\"name\":\"renamed\"}}' {url}/placements/1\n  \
         curl -i -X DELETE {url}/placements/2            # then GET it: 404\n  \
         curl {url}/videos/1/placements\n  \
         curl '{url}/placements?video_id=2&limit=5'\n  \
         curl -i {url}/public/products\n  \
         curl {url}/health\n  \
         curl -s {url}/metrics | grep ^cache_"
    );
    tokio::select! {
        result = running.wait() => {
            if let Err(e) = result {
                eprintln!("server failed: {e}");
                std::process::exit(1);
            }
        }
        _ = tokio::signal::ctrl_c() => println!("\nstopping"),
    }
}
