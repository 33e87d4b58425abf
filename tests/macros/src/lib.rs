//! `#[timed_test]`: a `#[tokio::test]` whose whole body runs under a time limit, so a test that
//! hangs anywhere (not only in a bounded receive) fails with "test NAME exceeded its N s limit"
//! instead of stalling the run until the test runner kills it.
//!
//! ```ignore
//! use partyline_test_macros::timed_test;
//!
//! #[timed_test] // #[tokio::test], 90 s
//! async fn quick() {}
//!
//! #[timed_test(flavor = "multi_thread", worker_threads = 2, secs = 110)]
//! async fn a_whole_cluster() {}
//! ```
//!
//! Every argument but `secs` goes to `#[tokio::test]` unchanged (`flavor`, `worker_threads`,
//! `start_paused`, ...). `secs` (any `u64` expression) is the limit; without it the limit is
//! 90 s (`DEFAULT_SECS`). The limit is wall-clock time, measured by a watchdog thread, so it holds in
//! tests with paused tokio time too (where a `tokio::time::timeout` would be virtual time).
//!
//! When the limit passes, the test's future panics with the message above the next time it is
//! polled. If it is never polled again (its runtime's thread is blocked), the watchdog prints
//! the message and exits the process 10 s (`GRACE_SECS`) later, so the test still does not hang.
//!
//! The integration tests of every crate use it (dev-dependency); the expansion needs `tokio`
//! with the `macros`, `rt` and `sync` features, which every crate with tokio tests has.

use proc_macro::TokenStream;
use proc_macro2::{TokenStream as TokenStream2, TokenTree};
use quote::quote;
use syn::{Expr, ItemFn, ReturnType};

/// The limit of a test that names none: generous for a busy 2-core machine, and below the 120 s
/// after which nextest kills a test (`.config/nextest.toml`), so a hung test fails with its
/// name and limit rather than nextest's timeout.
const DEFAULT_SECS: u64 = 90;

/// How long a test past its limit may go on without being polled (its runtime's thread is
/// blocked, so the panic cannot happen) before the watchdog exits the process.
const GRACE_SECS: u64 = 10;

/// A `#[tokio::test]` with a whole-test time limit; see the [crate] docs.
#[proc_macro_attribute]
pub fn timed_test(args: TokenStream, item: TokenStream) -> TokenStream {
    expand(args.into(), item.into()).unwrap_or_else(syn::Error::into_compile_error).into()
}

/// The attribute's arguments: the limit, and the rest for `#[tokio::test]`.
struct Args {
    secs: Option<Expr>,
    tokio: Vec<TokenStream2>,
}

/// Splits `a = 1, secs = 5, b = "x"` at its top-level commas, taking out `secs = EXPR`.
fn parse_args(args: TokenStream2) -> syn::Result<Args> {
    let mut parsed = Args { secs: None, tokio: Vec::new() };
    let mut chunks = vec![Vec::new()];
    for tt in args {
        match &tt {
            TokenTree::Punct(p) if p.as_char() == ',' => chunks.push(Vec::new()),
            _ => chunks.last_mut().expect("never empty").push(tt),
        }
    }
    for chunk in chunks.into_iter().filter(|c| !c.is_empty()) {
        let is_secs = matches!(&chunk[..], [TokenTree::Ident(name), TokenTree::Punct(eq), ..]
            if name == "secs" && eq.as_char() == '=');
        if !is_secs {
            parsed.tokio.push(chunk.into_iter().collect());
            continue;
        }
        let value: TokenStream2 = chunk[2..].iter().cloned().collect();
        if parsed.secs.is_some() {
            return Err(syn::Error::new_spanned(value, "`secs` is given twice"));
        }
        if value.is_empty() {
            return Err(syn::Error::new_spanned(&chunk[0], "`secs` needs a value: `secs = 120`"));
        }
        parsed.secs = Some(syn::parse2(value)?);
    }
    Ok(parsed)
}

fn expand(args: TokenStream2, item: TokenStream2) -> syn::Result<TokenStream2> {
    let Args { secs, tokio } = parse_args(args)?;
    let ItemFn { attrs, vis, sig, block } = syn::parse2(item)?;
    if sig.asyncness.is_none() {
        return Err(syn::Error::new_spanned(sig.fn_token, "#[timed_test] goes on an `async fn`"));
    }
    if !sig.inputs.is_empty() {
        return Err(syn::Error::new_spanned(&sig.inputs, "a test takes no arguments"));
    }
    let secs = secs.map_or_else(|| quote!(#DEFAULT_SECS), |e| quote!(#e));
    let output = match &sig.output {
        ReturnType::Default => quote!(()),
        ReturnType::Type(_, ty) => quote!(#ty),
    };
    let name = &sig.ident;
    Ok(quote! {
        #[::tokio::test(#(#tokio),*)]
        #(#attrs)*
        #vis #sig {
            let __timed_test_body = ::std::pin::pin!(async move #block);
            // The explicit output type lets `?` in the body infer its error type.
            let mut __timed_test_body: ::std::pin::Pin<&mut dyn ::std::future::Future<Output = #output>> =
                __timed_test_body;
            let __timed_test_name = ::std::concat!(::std::module_path!(), "::", ::std::stringify!(#name));
            let __timed_test_limit: u64 = #secs;
            // The watchdog fires `expired` when the limit passes, unless `done` is dropped first
            // (the test returned or panicked).
            let (__timed_test_expire, mut __timed_test_expired) = ::tokio::sync::oneshot::channel::<()>();
            let (__timed_test_done, __timed_test_watch) = ::std::sync::mpsc::channel::<()>();
            ::std::thread::Builder::new()
                .name(::std::format!("timed_test {}", __timed_test_name))
                .spawn(move || {
                    let timed_out = |limit: u64| {
                        ::std::matches!(
                            __timed_test_watch.recv_timeout(::std::time::Duration::from_secs(limit)),
                            ::std::result::Result::Err(::std::sync::mpsc::RecvTimeoutError::Timeout)
                        )
                    };
                    if timed_out(__timed_test_limit) {
                        let _ = __timed_test_expire.send(());
                        if timed_out(#GRACE_SECS) {
                            ::std::eprintln!(
                                "test {} exceeded its {} s limit, and its runtime did not stop it {} s later: exiting",
                                __timed_test_name, __timed_test_limit, #GRACE_SECS,
                            );
                            ::std::process::exit(101);
                        }
                    }
                })
                .expect("start the test's watchdog thread");
            let __timed_test_output = ::std::future::poll_fn(|cx| {
                if let ::std::task::Poll::Ready(output) =
                    ::std::future::Future::poll(__timed_test_body.as_mut(), cx)
                {
                    return ::std::task::Poll::Ready(output);
                }
                match ::std::future::Future::poll(::std::pin::Pin::new(&mut __timed_test_expired), cx) {
                    ::std::task::Poll::Ready(_) => {
                        ::std::panic!("test {} exceeded its {} s limit", __timed_test_name, __timed_test_limit)
                    }
                    ::std::task::Poll::Pending => ::std::task::Poll::Pending,
                }
            })
            .await;
            ::std::mem::drop(__timed_test_done);
            __timed_test_output
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expanded(args: TokenStream2, item: TokenStream2) -> String {
        expand(args, item).map_or_else(|e| format!("error: {e}"), |ts| ts.to_string())
    }

    #[test]
    fn secs_is_taken_out_and_the_rest_goes_to_tokio() {
        let args = parse_args(quote!(flavor = "multi_thread", secs = 2 * 60, worker_threads = 2)).unwrap();
        assert_eq!(args.secs.map(|e| quote!(#e).to_string()), Some(quote!(2 * 60).to_string()));
        let tokio: Vec<String> = args.tokio.iter().map(ToString::to_string).collect();
        assert_eq!(tokio, [quote!(flavor = "multi_thread").to_string(), quote!(worker_threads = 2).to_string()]);
    }

    #[test]
    fn the_default_limit_applies_without_secs() {
        let out = expanded(
            quote!(start_paused = true),
            quote!(
                async fn t() {}
            ),
        );
        assert!(out.starts_with(&quote!(#[::tokio::test(start_paused = true)]).to_string()), "{out}");
        assert!(out.contains(&quote!(let __timed_test_limit: u64 = 90u64;).to_string()), "{out}");
    }

    #[test]
    fn misuse_is_a_compile_error() {
        assert_eq!(
            expanded(
                quote!(),
                quote!(
                    fn t() {}
                )
            ),
            "error: #[timed_test] goes on an `async fn`"
        );
        assert_eq!(
            expanded(
                quote!(),
                quote!(
                    async fn t(x: u8) {}
                )
            ),
            "error: a test takes no arguments"
        );
        assert_eq!(
            expanded(
                quote!(secs = 1, secs = 2),
                quote!(
                    async fn t() {}
                )
            ),
            "error: `secs` is given twice"
        );
        assert_eq!(
            expanded(
                quote!(secs =),
                quote!(
                    async fn t() {}
                )
            ),
            "error: `secs` needs a value: `secs = 120`"
        );
    }
}
