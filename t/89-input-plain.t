# The create sets a long string of the input aside before jansson parses
# the body, where a scan says it is plain (mr_input_plain: valid UTF-8,
# only the escapes jansson writes).  That scan guards untrusted input:
# what it lets through, jansson no longer checks.  This test holds it to
# jansson, with jansson as the judge: each string is sent twice under
# one idempotency key, first as it is (A: set aside if plain), then with
# its first character written "\u0041" (B: never plain, so jansson reads
# it whole).  Both must be refused alike (400, MALFORMED_JSON), or the
# second must replay the first (the same fingerprint: the same stored
# text).  The strings are built from pieces of known kinds: plain (ASCII,
# DEL, the short escapes, \u00XX upper case, well-formed UTF-8 at every
# edge of RFC 3629's table), valid but not plain (\/, \u0041, lower-case
# hex, a surrogate pair, \u007F), and invalid (control characters, bad
# escapes, \u0000, a lone surrogate, overlong forms, encoded surrogates,
# above U+10FFFF, stray and missing continuation bytes, F5-FF) at the
# start, inside and at the end of a string, one by one and at random
# (seeded; the seed is printed).  The debug log says whether A was set
# aside (Debian's nginx is built --with-debug): exactly when every piece
# is plain.  Then the places a string may be in: only values inside the
# top-level "input" are set aside (not keys, not metadata, not the
# idempotency key), and a body refused after a stand-in is reported in
# its own words.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use MR::Test qw(:all);

my $t = MR::Test->new(extra_main => "error_log logs/debug.log debug;\n",
    http => <<'EOF');
modelroute_store %%STORE%%;
modelroute_model plain per_request=0.01;
server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; }
    location /admin/ { modelroute_admin; }
}
EOF
$t->start;
my $acct = $t->new_account(credit => '1000.00');
my %h = (%{ auth($acct->{key}) }, 'Content-Type' => 'application/json');

sub mark { -s ($t->prefix . '/logs/debug.log') // 0 }

# the count of the create's debug line after $from, undef without one
sub set_aside {
    my ($from) = @_;
    my $n;
    open my $fh, '<', $t->prefix . '/logs/debug.log' or return undef;
    seek $fh, $from, 0;
    while (<$fh>) {
        $n = $1 if /input set aside at the create: (\d+) strings/;
    }
    return $n;
}

sub post {
    my ($raw) = @_;
    my $from = mark();
    my $r = $t->req(POST => '/v1/executions', \%h, $raw);
    return ($r, set_aside($from));
}

my $seq = 0;
sub body {
    my ($key, $lit) = @_;
    return qq({"model":"plain","idempotency_key":"$key",)
        . qq("input":{"n":1,"p":"$lit","q":["x",{"r":"short"}]}});
}

# the pieces: [text as written, kind]; 1 plain, 2 valid, 0 invalid
my @plain = ('x', ' ', '~', "\x7f", '\\"', '\\\\', '\\b', '\\f', '\\n',
    '\\r', '\\t', '\\u0001', '\\u0007', '\\u000B', '\\u000E', '\\u001F',
    '\\u0010', "\xc2\x80", "\xdf\xbf", "\xe0\xa0\x80", "\xe0\xbf\xbf",
    "\xe1\x80\x80", "\xec\xbf\xbf", "\xed\x80\x80", "\xed\x9f\xbf",
    "\xee\x80\x80", "\xef\xbf\xbf", "\xe2\x80\xa8", "\xf0\x90\x80\x80",
    "\xf0\xbf\xbf\xbf", "\xf1\x80\x80\x80", "\xf3\xbf\xbf\xbf",
    "\xf4\x80\x80\x80", "\xf4\x8f\xbf\xbf");
my @valid = ('\\/', '\\u0041', '\\u00e9', '\\u001f', '\\u000A', '\\u0008',
    '\\u007F', '\\u0080', '\\u2028', '\\ud83d\\ude00', '\\uD83D\\uDE00',
    '\\u000b');
my @invalid = ("\x01", "\x1f", "\x0a", "\x09", "\x00", '\\x', "\\'",
    '\\u12', '\\uZZZZ', '\\u0000', '\\ud800', '\\udc00x', '\\U0041',
    "\xc0\x80", "\xc1\xbf", "\xe0\x80\x80", "\xe0\x9f\xbf",
    "\xed\xa0\x80", "\xed\xbf\xbf", "\xf0\x80\x80\x80", "\xf0\x8f\xbf\xbf",
    "\xf4\x90\x80\x80", "\xf4\xbf\xbf\xbf", "\xf5\x80\x80\x80", "\xf8",
    "\xfe", "\xff", "\x80", "\xbf", "\xc2", "\xc2\xc2\x80", "\xe2\x82",
    "\xe2\x82x", "\xf0\x9f\x98", "\xf0\x9f\x98x", "\xe1\x7f\x80",
    "\xe1\xc0\x80", "\xf1\x80\xc0\x80", "\xf1\x80\x80\x7f", "\xc2\x7f");
my @pieces = ((map { [$_, 1] } @plain), (map { [$_, 2] } @valid),
    (map { [$_, 0] } @invalid));

# no hex digit: a piece such as \u12 stays invalid before it
my $filler = join '', map { chr(ord('g') + $_ % 20) } 0 .. 79;

# one case: A (as written) then B (its leading A escaped), one key
sub case {
    my ($name, @p) = @_;
    my $text = join '', map { $_->[0] } @p;
    my $kind = (grep { $_->[1] == 0 } @p) ? 0
        : (grep { $_->[1] == 2 } @p) ? 2 : 1;
    my $key = sprintf 'k-plain-%d-%d', $$, ++$seq;
    my ($ra, $na) = post(body($key, "A$text"));
    my ($rb) = post(body($key, "\\u0041$text"));
    my $ok;
    if ($kind == 0) {
        $ok = $ra->{status} == 400 && $rb->{status} == 400
            && ($ra->{json}{error}{details}[0]{code} // '') eq
               'MALFORMED_JSON'
            && ($rb->{json}{error}{details}[0]{code} // '') eq
               'MALFORMED_JSON';
    } else {
        $ok = $ra->{status} == 202 && $rb->{status} == 202
            && ($rb->{headers}{'idempotent-replayed'} // '') eq 'true'
            && ($ra->{json}{id} // 'a') eq ($rb->{json}{id} // 'b')
            && ($na // -1) == ($kind == 1 ? 1 : 0);
    }
    ok($ok, $name) or diag explain [ unpack('H*', $text), $kind,
        $ra->{status}, $ra->{body}, $rb->{status}, $rb->{body}, $na ];
    return $ok;
}

# ---- each piece alone: at the start, in the middle, before the quote
for my $p (@pieces) {
    my $hex = unpack 'H*', $p->[0];
    case("piece $hex (kind $p->[1]) at the start",
        $p, [ $filler, 1 ]);
    case("piece $hex (kind $p->[1]) inside",
        [ substr($filler, 0, 40), 1 ], $p, [ substr($filler, 40), 1 ]);
    case("piece $hex (kind $p->[1]) at the end",
        [ $filler, 1 ], $p);
}

# ---- at random: a few pieces each, mostly plain
my $seed = $ENV{MR_SEED} // time;
diag("seed $seed (MR_SEED=$seed to repeat)");
srand($seed);
my $bad = 0;
for my $i (1 .. 200) {
    my @p = ([ substr($filler, 0, 64 + int(rand(16))), 1 ]);
    my $invalid = 0;
    for (1 .. 1 + int(rand(6))) {
        my $r = rand;
        my $set = $r < 0.7 ? \@plain : $r < 0.85 ? \@valid : \@invalid;
        # one invalid piece, a letter after it: two could make one valid
        # (\xc2 then \x80, \ud800 then \udc00)
        $set = \@plain if $set == \@invalid && $invalid++;
        my $s = $set->[int(rand(@$set))];
        push @p, [ $s, $set == \@plain ? 1 : $set == \@valid ? 2 : 0 ];
        push @p, [ 'g', 1 ] if $set == \@invalid;
        push @p, [ substr($filler, 0, int(rand(5))), 1 ] if rand() < 0.5;
    }
    $bad++ unless case("random $i", @p);
    last if $bad > 5;
}

# ---- where a long string is: only the input's values are set aside;
# the same body with each long string's first letter escaped (nothing set
# aside) replays it
{
    my $key = sprintf 'k-plain-%d-where', $$;
    my $where = sub {
        my ($l) = @_;
        return qq({"model":"plain","idempotency_key":"$key",)
            . qq("input":{"$l":"$l","a":["$l",{"b":"$l"}],)
            . qq("c":{"d":[[["$l"]]]}},"metadata":{"m":"$l"}});
    };
    my $l = 'A' . ('v' x 80);
    my ($r, $n) = post($where->($l));
    is($r->{status}, 202, 'placed everywhere: accepted')
        or diag explain $r->{json};
    is($n, 4, 'set aside: the four values in the input, not its key, '
        . 'not the metadata after it');
    my ($r2, $n2) = post($where->('\\u0041' . ('v' x 80)));
    is($r2->{json}{id} // 'b', $r->{json}{id} // 'a',
        'written otherwise: the same execution');
    is($r2->{headers}{'idempotent-replayed'}, 'true', 'replayed');
    is($n2, 0, 'written otherwise: nothing set aside');

    # "input" written with an escape is the input all the same; its
    # strings are then left to jansson (the scan knows the key by its
    # bytes)
    ($r, $n) = post(qq({"model":"plain","idempotency_key":"$key-esc",)
        . qq("\\u0069nput":{"p":"$l"}}));
    is($r->{status}, 202, '"\\u0069nput": accepted');
    is($n, 0, '"\\u0069nput": nothing set aside');

    # a key named "input" deeper down is not the input
    ($r, $n) = post(qq({"model":"plain","idempotency_key":"$key-deep",)
        . qq("metadata":{"input":"$l"},"input":{"p":"$l"}}));
    is($r->{status}, 202, 'metadata.input: accepted');
    is($n, 1, 'metadata.input: only the input\'s string set aside');
}

# ---- a body refused where jansson reads a stand-in: the error is the
# body's own (jansson reads it again whole): jansson quotes a token of 20
# bytes or less, so a stand-in ("\u00000") would show, a long string not
{
    my $l = 'w' x 80;
    my ($r, $n) = post(qq({"model":"plain","idempotency_key":"k-e-$$",)
        . qq("input":{"a":1 "A$l"}}));
    is($r->{status}, 400, 'a string where a comma goes: 400');
    my $msg = $r->{json}{error}{details}[0]{message} // '';
    unlike($msg, qr/\\u0000|\x00|near/, 'not a stand-in quoted')
        or diag $msg;
    my ($rb) = post(qq({"model":"plain","idempotency_key":"k-e-$$",)
        . qq("input":{"a":1 "\\u0041$l"}}));
    is($msg, $rb->{json}{error}{details}[0]{message} // 'b',
        'the same error as the body that sets nothing aside') or diag $msg;

    # a duplicate key after long strings: refused, as before
    ($r) = post(qq({"model":"plain","idempotency_key":"k-d-$$",)
        . qq("input":{"a":"$l","a":"$l"}}));
    is($r->{status}, 400, 'a duplicate key in the input: 400');
    like($r->{json}{error}{details}[0]{message} // '', qr/duplicate/,
        'the duplicate named');
    ($r) = post(qq({"model":"plain","idempotency_key":"k-i-$$",)
        . qq("input":{"a":"$l"},"input":{"a":"$l"}}));
    is($r->{status}, 400, 'the input twice: 400');

    # a real \u0000 in a short string next to long ones: refused by
    # jansson, not taken for a stand-in
    ($r) = post(qq({"model":"plain","idempotency_key":"k-n-$$",)
        . qq("input":{"a":"$l","b":"\\u00000"}}));
    is($r->{status}, 400, 'a \\u0000 of the body\'s own: 400');
}

my $v = $t->verify($acct->{org});
ok($v->{ok}, 'ledger verified') or diag explain $v;

$t->stop;
$t->check_log;
done_testing();
