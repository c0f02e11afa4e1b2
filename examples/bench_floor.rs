//! The floor under any proxy built on hyper and tokio: `bench/run`'s "floor" candidate.
//!
//! It does what every credential-injecting proxy on hyper must do and nothing else: keyward's
//! serving model (one current-thread runtime per worker thread, all accepting on one listening
//! socket), hyper's HTTP/1 server for the client's connection, keyward's own upstream pool
//! (hyper's HTTP/1 client, each connection polled by the request that holds it, which streams
//! faster than hyper's spawned connection task), the Authorization header set, bodies streamed
//! both ways. No access check, no routing, no log line, no ledger, no metrics, no limits, no
//! timeouts. What keyward spends beyond this is its request pipeline's; what this spends is
//! hyper's, tokio's and the pool's, and no change to the pipeline can go below it.
//!
//! Usage: `echo KEY | bench_floor LISTEN_ADDR UPSTREAM_ADDR [THREADS]`; prints
//! `listening on ADDR` once it accepts. A benchmark tool, not a proxy to deploy.

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use http_body_util::combinators::MapErr;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, Uri};
use hyper_util::rt::TokioIo;
use keyward::upstream::{BoxError, ClientSettings, Pool, UpstreamBody, connector};
use tokio::net::TcpListener;

/// A client's request body, as the pool sends it on.
type Outgoing = MapErr<Incoming, fn(hyper::Error) -> BoxError>;

fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: bench_floor LISTEN_ADDR UPSTREAM_ADDR [THREADS] (the key on stdin)";
    let listen: SocketAddr = args.next().ok_or(usage)?.parse()?;
    let upstream: SocketAddr = args.next().ok_or(usage)?.parse()?;
    let threads: usize = args.next().map_or(Ok(2), |n| n.parse())?;
    let mut key = String::new();
    std::io::stdin().read_line(&mut key)?;
    let mut authorization = HeaderValue::try_from(format!("Bearer {}", key.trim()))?;
    authorization.set_sensitive(true);
    let upstream: Uri = format!("http://{upstream}/v1/responses").parse()?;

    let listener = std::net::TcpListener::bind(listen)?;
    listener.set_nonblocking(true)?;
    println!("listening on {}", listener.local_addr()?);
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let listener = listener.try_clone()?;
            let (upstream, authorization) = (upstream.clone(), authorization.clone());
            Ok(std::thread::spawn(move || {
                worker(listener, upstream, authorization)
            }))
        })
        .collect::<std::io::Result<_>>()?;
    for worker in workers {
        worker.join().map_err(|_| "a worker panicked")??;
    }
    Ok(())
}

fn worker(
    listener: std::net::TcpListener,
    upstream: Uri,
    authorization: HeaderValue,
) -> Result<(), Box<dyn Error + Send + Sync>> {
    let settings = ClientSettings {
        connect_timeout: Duration::from_secs(10),
        proxy: None,
        extra_ca: None,
    };
    let pool = Arc::new(Pool::new(connector(&settings)?, upstream));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::from_std(listener)?;
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let (pool, authorization) = (pool.clone(), authorization.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    forward(request, pool.clone(), authorization.clone())
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

async fn forward(
    request: Request<Incoming>,
    pool: Arc<Pool<Outgoing>>,
    authorization: HeaderValue,
) -> Result<Response<UpstreamBody<Outgoing>>, BoxError> {
    let mut request = request.map(|body| body.map_err(Into::into as fn(_) -> _));
    request.headers_mut().insert(AUTHORIZATION, authorization);
    Ok(pool.send(request).await?)
}
