//! The fuzz targets' bodies (`fuzz/fuzz_targets/bodies.rs`) on random and hand-picked
//! inputs, so CI runs every property the fuzzers check. Longer runs: `fuzz/run.sh`.

#[path = "../fuzz/fuzz_targets/bodies.rs"]
mod bodies;

use proptest::prelude::*;

const SEEDS: &[&[u8]] = &[
    b"\x05POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcPOST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nz\r\n0\r\n\r\n",
    b"\x09POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\n",
    b"\x03GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"\x02\x05\r\nhello\r\n0\r\n\r\n",
    b"\x014\nabcd0\n3\nxyz",
    b"\x00{\"type\":\"ATTACH_CONTAINER_INPUT\",\"attach_container_input\":{\"type\":\"PROCESS_IO\",\"process_io\":{\"type\":\"DATA\",\"data\":{\"type\":\"STDIN\",\"data\":\"aGk=\"}}}}",
    b"\x01\x08\x12\x52\x09\x08\x01\x12\x05\x0a\x03abc",
];

#[test]
fn seeds() {
    for seed in SEEDS {
        bodies::http_head(seed);
        bodies::chunked(seed);
        bodies::recordio(seed);
        bodies::input_call(seed);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        bodies::http_head(&data);
        bodies::chunked(&data);
        bodies::recordio(&data);
        bodies::input_call(&data);
    }

    #[test]
    fn mutated_seeds(i in 0..SEEDS.len(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6)) {
        let mut data = SEEDS[i].to_vec();
        for (at, byte) in flips {
            let at = at % data.len();
            data[at] = byte;
        }
        bodies::http_head(&data);
        bodies::chunked(&data);
        bodies::recordio(&data);
        bodies::input_call(&data);
    }
}
