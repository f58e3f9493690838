//! The gateway's WebSocket attach, driven by a WebSocket client speaking the Kubernetes
//! streaming protocol to real containers started by `switchboard run -d`; and who may
//! use it (the token, the `Origin`).

mod support;

use base64::Engine;
use serde_json::{Value, json};
use support::{Gateway, Received, Runtime, receive, run_detached, send};
use tungstenite::Message;

const V5: &str = "v5.channel.k8s.io";

/// Waits until the gateway lists container `id` as running.
fn wait_running(gw: &Gateway, id: &str) {
    common::wait_until("the container runs", || {
        gw.containers()
            .iter()
            .any(|c| c["id"] == id && c["status"] == "running")
    });
}

/// Bytes that are not one byte repeated: a 64-bit LCG.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect()
}

fn status(got: &Received) -> Value {
    assert_eq!(
        got.errors.len(),
        1,
        "one message on the error channel: {:?}",
        got.errors
    );
    serde_json::from_slice(&got.errors[0]).unwrap()
}

#[test]
fn v5_carries_10_mib_of_stdout_and_stderr_byte_exact_then_the_exit_status() {
    let rt = Runtime::new("web-v5");
    let out = pattern(10 << 20, 1);
    let err = pattern(1 << 20, 2);
    std::fs::write(rt.path.join("out"), &out).unwrap();
    std::fs::write(rt.path.join("err"), &err).unwrap();
    // It waits for a line on stdin, so that the attachment is there before the output;
    // the output comes in 1 MiB pieces, so that the gateway is never the 8 MiB of the
    // switchboard's history behind (then it would be cut, and resume with bytes missing).
    let script = format!(
        "read go; [ \"$go\" = go ] || exit 9; \
         for i in 0 1 2 3 4 5 6 7 8 9; do dd if={0}/out bs=1M skip=$i count=1 status=none; sleep 0.05; done; \
         cat {0}/err >&2; exit 3",
        rt.path.display()
    );
    run_detached(&rt.path, "big", false, &["sh", "-c", &script]);
    let gw = Gateway::start(&rt.path);
    wait_running(&gw, "big");

    let (mut ws, chosen) = gw
        .websocket(
            "/api/v1/containers/big/attach?stdin=1&stdout=1&stderr=1",
            Some(&format!("{V5}, v4.channel.k8s.io")),
            &[],
        )
        .unwrap();
    assert_eq!(chosen.as_deref(), Some(V5), "the chosen subprotocol is echoed");
    let mut got = Received::default();
    receive(&mut ws, &mut got, |g| g.first.is_some());
    assert_eq!(got.first, Some((1, 0)), "an empty first message on stdout");
    send(&mut ws, 0, b"go\n");
    receive(&mut ws, &mut got, |_| false);

    assert_eq!(got.stdout.len(), out.len());
    assert!(got.stdout == out, "stdout arrives byte-exact");
    assert!(got.stderr == err, "stderr arrives byte-exact, on its own channel");
    let s = status(&got);
    assert_eq!(s["status"], "Failure");
    assert_eq!(s["reason"], "NonZeroExitCode");
    assert_eq!(s["details"]["causes"][0], json!({"reason": "ExitCode", "message": "3"}));
    assert_eq!(got.close_code, Some(1000));
}

#[test]
fn closing_stdin_ends_a_reader_and_success_is_a_status() {
    let rt = Runtime::new("web-eof");
    run_detached(&rt.path, "cat", false, &["sh", "-c", "cat; echo \"done-$?\""]);
    let gw = Gateway::start(&rt.path);
    wait_running(&gw, "cat");
    let (mut ws, _) = gw
        .websocket("/api/v1/containers/cat/attach?stdin=1&stdout=1", Some(V5), &[])
        .unwrap();
    let mut got = Received::default();
    receive(&mut ws, &mut got, |g| g.first.is_some());
    send(&mut ws, 0, b"abc\n");
    receive(&mut ws, &mut got, |g| g.stdout.ends_with(b"abc\n"));
    // Pings are answered.
    ws.send(Message::Ping(b"are you there".to_vec().into())).unwrap();
    loop {
        match ws.read().unwrap() {
            Message::Pong(p) => {
                assert_eq!(&p[..], b"are you there");
                break;
            }
            Message::Binary(b) => panic!("unexpected output {b:?}"),
            _ => {}
        }
    }
    // [255, 0]: stdin is closed, cat reads end of file.
    ws.send(Message::Binary(vec![255, 0].into())).unwrap();
    receive(&mut ws, &mut got, |_| false);
    assert_eq!(String::from_utf8_lossy(&got.stdout), "abc\ndone-0\n");
    assert_eq!(status(&got), json!({"metadata": {}, "status": "Success"}));
    assert_eq!(got.close_code, Some(1000));
}

#[test]
fn a_resize_reaches_the_pty() {
    let rt = Runtime::new("web-tty");
    run_detached(&rt.path, "shell", true, &["sh"]);
    let gw = Gateway::start(&rt.path);
    wait_running(&gw, "shell");
    let (mut ws, _) = gw
        .websocket("/api/v1/containers/shell/attach?stdin=1&stdout=1&tty=1", Some(V5), &[])
        .unwrap();
    let mut got = Received::default();
    receive(&mut ws, &mut got, |g| g.first.is_some());
    send(&mut ws, 4, br#"{"Width":123,"Height":45}"#);
    send(&mut ws, 0, b"stty size\n");
    receive(&mut ws, &mut got, |g| {
        String::from_utf8_lossy(&g.stdout).contains("45 123")
    });
    send(&mut ws, 4, br#"{"Width":81,"Height":19}"#);
    send(&mut ws, 0, b"stty size; exit 4\n");
    receive(&mut ws, &mut got, |_| false);
    assert!(String::from_utf8_lossy(&got.stdout).contains("19 81"));
    assert_eq!(status(&got)["details"]["causes"][0]["message"], "4");
    assert_eq!(got.close_code, Some(1000));
}

#[test]
fn older_protocols_base64_and_v1() {
    let rt = Runtime::new("web-b64");
    run_detached(&rt.path, "echo", false, &["sh", "-c", "read x; echo \"hi-$x\"; exit 3"]);
    let gw = Gateway::start(&rt.path);
    wait_running(&gw, "echo");
    let (mut ws, chosen) = gw
        .websocket(
            "/api/v1/containers/echo/attach?stdin=1&stdout=1&stderr=1",
            Some("base64.channel.k8s.io"),
            &[],
        )
        .unwrap();
    assert_eq!(chosen.as_deref(), Some("base64.channel.k8s.io"));
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut texts = Vec::new();
    let close;
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => {
                if texts.is_empty() {
                    ws.send(Message::Text(format!("0{}", b64.encode("there\n")).into()))
                        .unwrap();
                }
                texts.push(t.to_string());
            }
            Ok(Message::Close(f)) => {
                close = f.map(|f| u16::from(f.code));
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
    let decoded: Vec<(char, String)> = texts
        .iter()
        .map(|t| {
            let (c, d) = t.split_at(1);
            (
                c.chars().next().unwrap(),
                String::from_utf8(b64.decode(d).unwrap()).unwrap(),
            )
        })
        .collect();
    assert_eq!(decoded[0], ('1', String::new()), "the empty first message");
    assert!(decoded.contains(&('1', "hi-there\n".into())), "{decoded:?}");
    // Before v4, the error channel says the failure as a text.
    assert_eq!(
        decoded.last().unwrap(),
        &('3', "command terminated with non-zero exit code: exit status 3".into())
    );
    assert_eq!(close, Some(1000));
}

#[test]
fn a_terminal_gets_its_size_and_a_redraw_first() {
    let rt = Runtime::new("web-screen");
    let script = "printf '\\033[?1049h\\033[5;5Hdrawn'; read x; stty size; read y";
    run_detached(&rt.path, "full", true, &["sh", "-c", script]);
    let gw = Gateway::start(&rt.path);
    wait_running(&gw, "full");
    // (Until it drew, a redraw would be blank.)
    std::thread::sleep(std::time::Duration::from_millis(300));
    let path = "/api/v1/containers/full/attach?stdin=1&stdout=1&tty=1&from=live&screen=1&rows=30&cols=100";
    let (mut ws, _) = gw.websocket(path, Some(V5), &[]).unwrap();
    let mut got = Received::default();
    // The redraw first, then where the output starts (the redraw has no position).
    receive(&mut ws, &mut got, |g| g.texts.len() == 1);
    let redraw = String::from_utf8_lossy(&got.stdout).into_owned();
    assert!(redraw.contains("drawn") && redraw.contains("\x1b[?1049h"), "{redraw:?}");
    send(&mut ws, 0, b"go\r");
    receive(&mut ws, &mut got, |g| {
        String::from_utf8_lossy(&g.stdout).contains("30 100")
    });
}

#[test]
fn subprotocols_in_the_clients_order_and_the_older_ones() {
    let rt = Runtime::new("web-protocols");
    let script = "while read x; do [ \"$x\" = quit ] && exit 3; echo \"got-$x\"; done";
    run_detached(&rt.path, "loop", false, &["sh", "-c", script]);
    let gw = Gateway::start(&rt.path);
    wait_running(&gw, "loop");
    let path = "/api/v1/containers/loop/attach?stdin=1&stdout=1&stderr=1";
    let (_, chosen) = gw
        .websocket(path, Some("base64.channel.k8s.io, channel.k8s.io"), &[])
        .unwrap();
    assert_eq!(
        chosen.as_deref(),
        Some("base64.channel.k8s.io"),
        "the client's first that we speak"
    );
    assert_eq!(gw.websocket(path, Some("nope.k8s.io"), &[]).err(), Some(400));

    // No subprotocol is channel.k8s.io (binary frames); this one only watches.
    let (mut v1, chosen) = gw
        .websocket("/api/v1/containers/loop/attach?stdout=1", None, &[])
        .unwrap();
    assert_eq!(chosen, None);
    let mut v1_got = Received::default();
    receive(&mut v1, &mut v1_got, |g| g.first.is_some());
    let (mut v4, chosen) = gw.websocket(path, Some("v4.channel.k8s.io"), &[]).unwrap();
    assert_eq!(chosen.as_deref(), Some("v4.channel.k8s.io"));
    let mut v4_got = Received::default();
    receive(&mut v4, &mut v4_got, |g| g.first.is_some());
    send(&mut v4, 0, b"a\n");
    receive(&mut v4, &mut v4_got, |g| g.stdout.ends_with(b"got-a\n"));
    // v4 has no close frames: [255, 0] does nothing.
    v4.send(Message::Binary(vec![255, 0].into())).unwrap();
    send(&mut v4, 0, b"b\n");
    receive(&mut v4, &mut v4_got, |g| g.stdout.ends_with(b"got-b\n"));
    send(&mut v4, 0, b"quit\n");
    receive(&mut v4, &mut v4_got, |_| false);
    assert_eq!(status(&v4_got)["reason"], "NonZeroExitCode");
    assert_eq!(v4_got.close_code, Some(1000));
    receive(&mut v1, &mut v1_got, |_| false);
    assert_eq!(String::from_utf8_lossy(&v1_got.stdout), "got-a\ngot-b\n");
    assert_eq!(
        v1_got.errors,
        vec![b"command terminated with non-zero exit code: exit status 3".to_vec()],
        "a text on the error channel before v4"
    );
    assert_eq!(v1_got.close_code, Some(1000));
}

#[test]
fn a_second_stdin_is_a_conflict_and_watching_needs_no_stdin() {
    let rt = Runtime::new("web-conflict");
    run_detached(
        &rt.path,
        "loop",
        false,
        &["sh", "-c", "while read x; do echo \"got-$x\"; done"],
    );
    let gw = Gateway::start(&rt.path);
    wait_running(&gw, "loop");
    let path = "/api/v1/containers/loop/attach?stdin=1&stdout=1";
    let (mut a, _) = gw.websocket(path, Some(V5), &[]).unwrap();
    let mut a_got = Received::default();
    receive(&mut a, &mut a_got, |g| g.first.is_some());
    send(&mut a, 0, b"a\n");
    receive(&mut a, &mut a_got, |g| g.stdout.ends_with(b"got-a\n"));

    let (mut b, _) = gw.websocket(path, Some(V5), &[]).unwrap();
    let mut b_got = Received::default();
    receive(&mut b, &mut b_got, |_| false);
    let s = status(&b_got);
    assert_eq!(
        (s["status"].as_str(), s["reason"].as_str()),
        (Some("Failure"), Some("Conflict"))
    );
    assert_eq!(s["code"], 409);
    assert_eq!(b_got.close_code, Some(1000));

    // A watcher (no stdin) is not refused; its resizes and stdin go nowhere, and never
    // hold up its output however many come.
    let (mut c, _) = gw
        .websocket("/api/v1/containers/loop/attach?stdout=1", Some(V5), &[])
        .unwrap();
    let mut c_got = Received::default();
    receive(&mut c, &mut c_got, |g| g.first.is_some());
    for _ in 0..50 {
        send(&mut c, 4, br#"{"Width":100,"Height":30}"#);
        send(&mut c, 0, b"ignored\n");
        c.send(Message::Binary(vec![255, 0].into())).unwrap();
    }
    send(&mut a, 0, b"b\n");
    receive(&mut c, &mut c_got, |g| g.stdout.ends_with(b"got-b\n"));
    assert_eq!(String::from_utf8_lossy(&c_got.stdout), "got-b\n");
}

#[test]
fn a_container_that_does_not_read_stdin_holds_up_neither_output_nor_the_next_client() {
    let rt = Runtime::new("web-jam");
    let script = "read go; while :; do echo tick; sleep 0.1; done";
    run_detached(&rt.path, "jam", false, &["sh", "-c", script]);
    let gw = Gateway::start(&rt.path);
    wait_running(&gw, "jam");
    let path = "/api/v1/containers/jam/attach?stdin=1&stdout=1";
    let (mut a, _) = gw.websocket(path, Some(V5), &[]).unwrap();
    let mut got = Received::default();
    receive(&mut a, &mut got, |g| g.first.is_some());
    send(&mut a, 0, b"go\n");
    receive(&mut a, &mut got, |g| g.stdout.ends_with(b"tick\n"));
    // 2 MiB of stdin nobody reads: the pipe, the switchboard and the gateway's queue fill.
    for _ in 0..16 {
        send(&mut a, 0, &vec![b'x'; 128 << 10]);
    }
    let before = got.stdout.len();
    receive(&mut a, &mut got, |g| g.stdout.len() >= before + 5 * "tick\n".len());
    // The client leaves: its stdin slot is free for the next one.
    drop(a);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let (mut b, _) = gw.websocket(path, Some(V5), &[]).unwrap();
        let mut b_got = Received::default();
        let start = std::time::Instant::now();
        receive(&mut b, &mut b_got, |g| {
            !g.errors.is_empty() || start.elapsed() > std::time::Duration::from_millis(1500)
        });
        if b_got.errors.is_empty() {
            assert!(b_got.stdout.ends_with(b"tick\n"));
            break;
        }
        assert_eq!(status(&b_got)["reason"], "Conflict");
        assert!(
            std::time::Instant::now() < deadline,
            "the slot stays held after its client left"
        );
    }
}

#[test]
fn a_dropped_attachment_resumes_at_its_position() {
    let rt = Runtime::new("web-resume");
    run_detached(
        &rt.path,
        "talk",
        false,
        &["sh", "-c", "echo one; read x; echo \"two-$x\"; read y"],
    );
    let gw = Gateway::start(&rt.path);
    wait_running(&gw, "talk");
    let attach = |from: &str| {
        let path = format!("/api/v1/containers/talk/attach?stdout=1&stderr=1&from={from}");
        gw.websocket(&path, Some(V5), &[]).unwrap().0
    };
    let position = |got: &Received| -> u64 {
        let v: Value = serde_json::from_str(&got.texts[0]).unwrap();
        v["position"].as_u64().unwrap()
    };
    // The first attachment sees what was kept, and says where it starts.
    let mut ws = attach("kept");
    let mut got = Received::default();
    receive(&mut ws, &mut got, |g| g.stdout.ends_with(b"one\n"));
    let start = position(&got);
    assert!(
        gw.containers().iter().any(|c| c["id"] == "talk" && c["clients"] == 1),
        "the list counts the attached client: {:?}",
        gw.containers()
    );
    drop(ws);

    // Meanwhile the container writes on (its stdin through another attachment).
    let (mut input, _) = gw
        .websocket("/api/v1/containers/talk/attach?stdin=1", Some(V5), &[])
        .unwrap();
    send(&mut input, 0, b"go\n");
    let mut all = Received::default();
    let mut ws = attach("kept");
    receive(&mut ws, &mut all, |g| g.stdout.ends_with(b"two-go\n"));
    assert_eq!(String::from_utf8_lossy(&all.stdout), "one\ntwo-go\n");

    // Resuming at the byte after "one\n" gets only what came since.
    let mut ws = attach(&(start + 4).to_string());
    let mut rest = Received::default();
    receive(&mut ws, &mut rest, |g| g.stdout.ends_with(b"two-go\n"));
    assert_eq!(position(&rest), start + 4);
    assert_eq!(String::from_utf8_lossy(&rest.stdout), "two-go\n");
    send(&mut input, 0, b"end\n");
    receive(&mut ws, &mut rest, |_| false);
    assert_eq!(status(&rest)["status"], "Success");
}

#[test]
fn the_token_and_the_origin_are_checked() {
    let rt = Runtime::new("web-auth");
    run_detached(&rt.path, "idle", false, &["sh", "-c", "read x"]);
    let gw = Gateway::start(&rt.path);
    wait_running(&gw, "idle");

    // No token, a wrong one: 401, on every route.
    for path in [
        "/",
        "/api/v1/containers",
        "/assets/app.js",
        "/api/v1/containers/idle/attach?stdout=1",
    ] {
        assert_eq!(gw.get(path, &[]).0, 401, "{path}");
        let wrong = [("Authorization", "Bearer 0123456789abcdef0123456789abcdef")];
        assert_eq!(gw.get(path, &wrong).0, 401, "{path}");
    }
    // The one-time URL sets the cookie and sends the browser to the page without it.
    let (status, head, _) = gw.get(&format!("/?token={}", gw.token), &[]);
    assert_eq!(status, 303, "{head}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("location: /\r\n"), "{head}");
    let port = gw.addr.rsplit(':').next().unwrap();
    let cookie = format!("switchboard_token_{port}={}", gw.token);
    assert!(head.contains(&format!("set-cookie: {cookie}; path=/; httponly; samesite=strict")));
    let (status, _, body) = gw.get("/", &[("Cookie", &cookie)]);
    assert_eq!(status, 200);
    assert!(body.contains("xterm.js"), "the page");
    assert_eq!(gw.get("/assets/xterm.js", &[("Cookie", &cookie)]).0, 200);
    assert_eq!(gw.get("/assets/nope.js", &[("Cookie", &cookie)]).0, 404);

    // The list is the runtime directory's.
    let list = gw.containers();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["command"], json!(["sh", "-c", "read x"]));

    // A WebSocket without the token, or from another site's page, is refused.
    let path = "/api/v1/containers/idle/attach?stdout=1";
    let mut request = format!("ws://{}{path}", gw.addr);
    assert_eq!(
        tungstenite::connect(request.as_str()).err().map(|e| match e {
            tungstenite::Error::Http(r) => r.status().as_u16(),
            e => panic!("{e}"),
        }),
        Some(401)
    );
    let foreign = [("Origin", "http://evil.example")];
    assert_eq!(gw.websocket(path, Some(V5), &foreign).err(), Some(403));
    let own = format!("http://{}", gw.addr);
    assert!(gw.websocket(path, Some(V5), &[("Origin", &own)]).is_ok());
    request.push_str(&format!("&token={}", gw.token));
    assert!(
        tungstenite::connect(request.as_str()).is_ok(),
        "the token as a query parameter"
    );

    // An unknown container, a path for a name, or no stream at all.
    assert_eq!(
        gw.websocket("/api/v1/containers/nope/attach?stdout=1", Some(V5), &[])
            .err(),
        Some(404)
    );
    assert_eq!(
        gw.websocket("/api/v1/containers/../attach?stdout=1", Some(V5), &[])
            .err(),
        Some(404)
    );
    assert_eq!(
        gw.websocket("/api/v1/containers/idle/attach", Some(V5), &[]).err(),
        Some(400)
    );
    assert_eq!(
        gw.websocket("/api/v1/containers/idle/attach?stdout=1&from=x", Some(V5), &[])
            .err(),
        Some(400)
    );
}
