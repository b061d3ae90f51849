# A provider's request carries the execution's input exactly, whatever
# its strings hold.  The adapter reads the stored input with each long
# string (64 bytes or more as stored) set aside and puts the stored text
# back into the request it encodes (mr_input.c): this test sends, through
# each protocol, long strings next to short ones, in values, arrays,
# nested objects and parameters, long keys (never set aside), escapes of
# every kind (quotes, runs of backslashes before a quote and at a
# string's end, control characters, the text \u0000 after a backslash,
# text that looks like a stand-in or a key), multibyte UTF-8, U+2028,
# DEL, strings on both sides of the length that sets one aside, and more
# than a thousand long strings.  Each request decodes to what the
# protocol makes of the input, and holds each long string encoded as
# jansson encodes it (byte for byte).
#
# The create sets a long string aside too, where the body writes it as
# jansson would: bodies written by hand, with escapes jansson does not
# write, spaces, keys in another order, a mixed array, objects of 8 and
# 16 long values, nesting 70 deep, are stored as
# jansson writes them (the same key with the same input written either
# way is the same execution).
#
# Whether a string was set aside does not show in a request (that is the
# point): the debug log counts them, at the create and at each attempt
# (Debian's nginx is built --with-debug).  On PostgreSQL the test also
# writes a stored input by hand, with escapes jansson does not write: the
# request holds a long string's text as stored (set aside) and a short
# one's as jansson encodes it again (read).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Encode qw(encode_utf8);
use MR::Test qw(:all);
use MR::Receiver qw(chat_completion);

my $rc = MR::Receiver->new;
$rc->start;
my $RP = $rc->port;

my $t = MR::Test->new(extra_main => "error_log logs/debug.log debug;\n",
    http => <<"EOF");
modelroute_store %%STORE%%;
modelroute_callback_url http://127.0.0.1:%%PORT%%/v1/callbacks;
modelroute_route chat /p/chat protocol=openai_chat;
modelroute_route anth /p/anth protocol=anthropic;
modelroute_route emb  /p/emb  protocol=openai_embeddings;
modelroute_route img  /p/img  protocol=openai_images;
modelroute_route job  /p/job  protocol=async;
modelroute_route one  /p/one  protocol=openai_chat max_concurrency=1;
modelroute_model m-chat per_request=0.01 routes=chat:prov attempts=1;
modelroute_model m-anth per_request=0.01 routes=anth:prov attempts=1;
modelroute_model m-emb  per_request=0.01 routes=emb:prov attempts=1;
modelroute_model m-img  per_request=0.01 routes=img:prov attempts=1;
modelroute_model m-job  per_request=0.01 routes=job:prov attempts=1;
modelroute_model m-one  per_request=0.01 routes=one:prov attempts=1;
server {
    listen 127.0.0.1:%%PORT%%;
    location /v1/ { modelroute_api; }
    location /admin/ { modelroute_admin; }
}
server {
    modelroute_dispatch;
    location /p/chat { internal; proxy_pass http://127.0.0.1:$RP/chat; }
    location /p/anth { internal; proxy_pass http://127.0.0.1:$RP/anth; }
    location /p/emb  { internal; proxy_pass http://127.0.0.1:$RP/emb; }
    location /p/img  { internal; proxy_pass http://127.0.0.1:$RP/img; }
    location /p/job  { internal; proxy_pass http://127.0.0.1:$RP/job; }
    location /p/one  { internal; proxy_pass http://127.0.0.1:$RP/one; }
}
EOF
$t->start;
my $acct = $t->new_account(credit => '100.00');
my $key = $acct->{key};

$rc->set($_, json => chat_completion()) for qw(/chat /anth /emb /img);
$rc->set('/job', status => 202, json => { job_id => 'j' });
$rc->set('/one', json => chat_completion(), hold => 'one');

# A string as jansson encodes it (compact, UTF-8 as is): the escapes it
# writes are these.
my %ESC = ('"' => '\\"', '\\' => '\\\\', "\b" => '\\b', "\f" => '\\f',
    "\n" => '\\n', "\r" => '\\r', "\t" => '\\t');
sub jenc {
    my ($s) = @_;
    $s =~ s/(["\\\x00-\x1f])/$ESC{$1} \/\/ sprintf('\\u%04X', ord $1)/ge;
    return encode_utf8(qq("$s"));
}

# The debug log's counts of strings set aside since a mark, at the
# create and at each attempt (nginx is built --with-debug on Debian)
sub mark { -s ($t->prefix . '/logs/debug.log') // 0 }

sub set_aside {
    my ($from) = @_;
    my (@create, @attempt);
    open my $fh, '<', $t->prefix . '/logs/debug.log' or return ([], []);
    seek $fh, $from, 0;
    while (<$fh>) {
        push @create, $1 if /input set aside at the create: (\d+) strings/;
        push @attempt, $1 if /input set aside for an attempt: (\d+) str/;
    }
    return (\@create, \@attempt);
}

my $n = 0;
sub long {
    my ($tail, $len) = @_;
    my $s = sprintf 'L%02d-', ++$n;
    $s .= chr(ord('a') + $_ % 26) for 1 .. ($len // 70) - length($s);
    return $s . ($tail // '');
}

# strings that are hard to end: escaped quotes after runs of backslashes,
# a backslash (or two, or three) as the last character, a key's colon
# and a stand-in's look inside the text (the text \u0000 after a
# backslash, stored as \\u0000), control characters, UTF-8, U+2028 and
# U+2029, DEL, a slash
my @hard = (
    long('"'), long('\\"'), long('\\\\"x'), long('\\'), long('\\\\'),
    long('\\\\\\'), long('":1,"k":"'), long('"\\u0000"'), long(q(\\"\\)),
    long("\x01\x1f\t\n\r\b\f"), long("\x{e9}\x{263a}\x{1F600}"),
    long("\x{2028}\x{2029}\x7f/"), '"' x 40, '\\' x 40, "\x{1F600}" x 20,
);

# near the length that sets a string aside: the encoded length is the
# string's plus its two quotes (none of these has anything to escape)
my @edge = map { long('', $_) } 60 .. 64;

my $seq = 0;
sub run {
    my ($model, $path, $input) = @_;
    my $before = $rc->count(path => $path);
    my $r = $t->create_exec($key, $t->exec_body(model => $model,
        input => $input));
    is($r->{status}, 202, "$model #" . ++$seq . ': accepted')
        or diag explain $r->{json};
    my @req = $rc->wait_requests($before + 1, path => $path, timeout => 20);
    ok(@req, "$model #$seq: the provider got the request") or return;
    return $req[$before];
}

sub holds_each {
    my ($req, $what, @s) = @_;
    my @missing = grep { index($req->{body}, jenc($_)) < 0 } @s;
    is(scalar(@missing), 0, "$what: each string encoded as jansson does")
        or diag explain [ map { jenc($_) } @missing ];
}

# ---- OpenAI chat, a prompt and a system prompt, parameters that hold
# long strings
{
    my ($p, $sys, $u) = (long("\n\n"), long('"quoted"'), long());
    my @stop = (long(), 'END', $hard[0]);
    my $req = run('m-chat', '/chat', { prompt => $p, system => $sys,
        user => $u, stop => \@stop, temperature => 0.5, max_tokens => 77,
        ignored => long() });
    is_deeply($req->{json}, { model => 'prov',
        messages => [ { role => 'system', content => $sys },
                      { role => 'user', content => $p } ],
        max_tokens => 77, temperature => 0.5, stop => \@stop, user => $u },
        'chat: prompt, system and parameters') or diag $req->{body};
    holds_each($req, 'chat', $p, $sys, $u, @stop[0, 2]);
}

# ---- OpenAI chat, messages with every hard string, content parts
{
    my @msgs = map { { role => $_ % 2 ? 'user' : 'assistant',
        content => $hard[$_] } } 0 .. $#hard;
    push @msgs, { role => 'user', content => [
        { type => 'text', text => $_ } ] } for @edge;
    push @msgs, { role => long(), content => 'short' };
    push @msgs, { role => 'user', content => [ map {
        { type => 'text', text => long() } } 1 .. 1100 ] };
    my $from = mark();
    my $req = run('m-chat', '/chat', { messages => \@msgs });
    is_deeply($req->{json}{messages}, \@msgs, 'chat: messages as sent')
        or diag $req->{body};
    # the 15 hard strings, 3 of the 5 near the length, the long role and
    # the 1,100 parts
    is_deeply((set_aside($from))[1], [1119],
        'set aside at the attempt: 1,119 strings');
    holds_each($req, 'chat messages', @hard, @edge,
        map { $_->{text} } @{ $msgs[-1]{content} });
}

# ---- Anthropic: the system message apart, long stop sequences
{
    my $sys = long('\\');
    my @msgs = ({ role => 'system', content => $sys },
        { role => long('system'), content => long() },
        { role => 'user', content => $hard[1] },
        { role => 'assistant', content => long() },
        { role => 'user', content => [ { type => 'text', text => long() },
            { type => 'image', source => { data => long('=', 200) } } ] });
    my @stop = (long(), long('"'));
    my $req = run('m-anth', '/anth', { messages => \@msgs,
        stop_sequences => \@stop, max_tokens => 90 });
    is_deeply($req->{json}, { model => 'prov', system => $sys,
        messages => [ @msgs[1 .. 4] ], max_tokens => 90,
        stop_sequences => \@stop }, 'anthropic: system apart')
        or diag $req->{body};
    holds_each($req, 'anthropic', $sys, @stop);
}

# ---- embeddings: an array of long and short strings
{
    my @in = (long(), 'short', @hard[2 .. 5], long('', 500));
    my $req = run('m-emb', '/emb', { input => \@in, dimensions => 8 });
    is_deeply($req->{json}, { model => 'prov', input => \@in,
        dimensions => 8 }, 'embeddings: the array as sent')
        or diag $req->{body};
    holds_each($req, 'embeddings', @in[0, 2 .. 6]);
}

# ---- images: a long prompt and parameters
{
    my ($p, $style) = (long("\x{e9}" x 30), long());
    my $req = run('m-img', '/img', { prompt => $p, size => '512x512',
        style => $style });
    is_deeply($req->{json}, { model => 'prov', prompt => $p,
        size => '512x512', style => $style },
        'images: prompt and parameters') or diag $req->{body};
    holds_each($req, 'images', $p, $style);
}

# ---- the asynchronous protocol: the whole input, nested, with long keys
{
    my $lk = long(':');
    my $input = { max_tokens => 12, $lk => long(),
        nested => { a => [ long(), 1, 2.5, JSON::PP::true, undef,
            { $lk => $hard[6], k => long() } ], b => 'x' },
        hard => \@hard, edge => \@edge };
    my $req = run('m-job', '/job', $input);
    is_deeply($req->{json}{input}, $input, 'async: the input as sent')
        or diag $req->{body};
    is($req->{json}{max_tokens}, 12, 'async: its budget');
    holds_each($req, 'async', $lk, @hard, @edge);
}

# ---- an input whose only long string is a key (nothing set aside)
{
    my $lk = long();
    my $req = run('m-job', '/job', { $lk => 'v', k => { $lk => [ 1 ] } });
    is_deeply($req->{json}{input}, { $lk => 'v', k => { $lk => [ 1 ] } },
        'a long key only: as sent') or diag $req->{body};
}

# ---- a long string as the only string, and an input made of a short one
{
    my $p = long('', 64);
    my $req = run('m-chat', '/chat', { prompt => $p });
    is($req->{json}{messages}[0]{content}, $p, 'one long string');
    $req = run('m-chat', '/chat', { prompt => 'hi' });
    is($req->{json}{messages}[0]{content}, 'hi', 'one short string');
}

# ---- the create takes a long string's text from the body where the body
# writes it as jansson would: a body written otherwise (escapes jansson
# does not write, each in a string of its own: \/, \u0041, lower-case hex,
# a surrogate pair, \u000A for a newline; spaces, keys in another order,
# long strings outside the input before it) is stored as jansson writes
# it all the same, and the same key with the same input written either
# way is the same execution; one byte more in a long string is another
# input (409)
{
    my @odd = (['\\/', '/'], ['\\u0041', 'A'], ['\\u001f', "\x1f"],
        ['\\ud83d\\ude00', "\x{1F600}"], ['\\u000A', "\n"]);
    my ($a, $c, $u) = (long(), long('"\\'), long("\x1f\x01"));
    my $mk = long();
    my $ik = 'k-raw-' . $$ . '-' . time;
    my @base = map { long() } @odd;
    my $input = { a => $a, m => $c, u => $u,
        list => [ $a, { $mk => $a } ],
        map { ("z$_" => $base[$_] . $odd[$_][1]) } 0 .. $#odd };
    my $raw = qq({ "metadata" : { "note" : "$mk" },\n "model" : "m-job",)
        . qq( "idempotency_key" : "$ik",\n "input" : {\t)
        . join('', map { qq("z$_" : "$base[$_]$odd[$_][0]" ,\n) }
            reverse 0 .. $#odd)
        . qq( "a" :\n"$a", "m": ) . jenc($c) . ' , "u":' . jenc($u)
        . qq( ,"list":[ "$a" , {"$mk":"$a"}] } }\n);
    my $before = $rc->count(path => '/job');
    my %h = (%{ auth($key) }, 'Content-Type' => 'application/json');
    my $from = mark();
    my $r = $t->req(POST => '/v1/executions', \%h, $raw);
    is($r->{status}, 202, 'a body written otherwise: accepted')
        or diag explain [ $r->{json}, $raw ];
    my @req = $rc->wait_requests($before + 1, path => '/job',
        timeout => 20);
    my $req = $req[$before] // {};
    # at the create, $a three times, $c and $u (not z0 to z4, not the
    # metadata's string, not the key $mk); each long value at the attempt
    is_deeply([ set_aside($from) ], [ [5], [10] ],
        'set aside: 5 strings at the create, 10 at the attempt');
    is_deeply($req->{json}{input}, $input, 'it means what it says')
        or diag $req->{body};
    holds_each($req, 'a body written otherwise', $a, $c, $u,
        map { $input->{"z$_"} } 0 .. $#odd);
    my $again = $t->create_exec($key, { model => 'm-job',
        idempotency_key => $ik, input => $input,
        metadata => { note => $mk } });
    is($again->{json}{id} // '', $r->{json}{id} // 'none',
        'written as jansson writes it: the same execution');
    is($again->{headers}{'idempotent-replayed'}, 'true', 'replayed');
    my %one_more = (%$input, a => "${a}x");
    my $diff = $t->create_exec($key, { model => 'm-job',
        idempotency_key => $ik, input => \%one_more,
        metadata => { note => $mk } });
    is($diff->{status}, 409, 'one byte more in a long string: 409');
}

# ---- more bodies for the create: a mixed array, a long key ending in a
# backslash before spaces and its colon, \u001F and \u001f side by side,
# objects of 8 and 16 long values, nesting 70 deep (set aside all the
# same), long strings after the input
{
    my ($l1, $l2, $l3) = (long(), long(), long());
    my $lk = long('\\');
    my %o8 = map { ("k$_" => long()) } 1 .. 8;
    my %o16 = map { ("k$_" => long()) } 1 .. 16;
    my $deep = $l3;
    $deep = [ $deep ] for 1 .. 70;
    my $input = { mixed => [ 1, $l1, undef, {}, [], { k => $l2 }, $l3 ],
        $lk => $l1, upper => "${l2}\x1f", lower => "${l3}\x1f",
        o8 => \%o8, o16 => \%o16, deep => $deep };
    my $enc = JSON::PP->new->utf8->canonical;
    my $raw = qq({"model":"m-job","input":{ "mixed" : [1, "$l1", null, {},)
        . qq( [], {"k":"$l2"}, "$l3"],\n) . jenc($lk) . qq( \n :"$l1",)
        . qq( "upper": "$l2\\u001F", "lower": "$l3\\u001f",)
        . ' "o8": ' . $enc->encode(\%o8) . ', "o16": '
        . $enc->encode(\%o16) . ', "deep": ' . $enc->encode($deep)
        . qq(}, "idempotency_key": ") . $t->fresh_key
        . qq(", "metadata": {"after": "$l1"}});
    my $before = $rc->count(path => '/job');
    my %h = (%{ auth($key) }, 'Content-Type' => 'application/json');
    my $from = mark();
    my $r = $t->req(POST => '/v1/executions', \%h, $raw);
    is($r->{status}, 202, 'pairing bodies: accepted')
        or diag explain [ $r->{json}, $raw ];
    my @req = $rc->wait_requests($before + 1, path => '/job',
        timeout => 20);
    my $req = $req[$before] // {};
    is_deeply($req->{json}{input}, $input, 'pairing bodies: as sent')
        or diag $req->{body};
    # nesting 70 deep: set aside at the create too (the scan of the body
    # keeps no stack); all but lower's (\u001f) at the create, every long
    # value at the attempt (the stored text is jansson's)
    is_deeply([ set_aside($from) ], [ [30], [31] ],
        'set aside: 30 at the create (one 70 deep), 31 at the attempt');
    holds_each($req, 'pairing bodies', $l1, $l2, $l3, $lk,
        "${l2}\x1f", "${l3}\x1f", values %o8, values %o16);
    delete $input->{deep};
    $raw =~ s/, "deep": \[+"\Q$l3\E"\]+//;
    my $fresh = $t->fresh_key;
    $raw =~ s/"idempotency_key": "[^"]+"/"idempotency_key": "$fresh"/;
    $from = mark();
    $r = $t->req(POST => '/v1/executions', \%h, $raw);
    is($r->{status}, 202, 'without the deep part: accepted')
        or diag explain [ $r->{json}, $raw ];
    @req = $rc->wait_requests($before + 2, path => '/job', timeout => 20);
    is_deeply(($req[$before + 1] // {})->{json}{input}, $input,
        'without the deep part: as sent');
    # the mixed array's 3, $l1 under the key $lk, upper (not lower), 8
    # and 16; at the attempt lower too
    is_deeply([ set_aside($from) ], [ [29], [30] ],
        'set aside: 29 strings at the create, 30 at the attempt');
}

# ---- PostgreSQL: a stored input with escapes jansson does not write
# (\u0041 for A, \/ for /): a long string goes as stored, a short one as
# jansson encodes it again.  The first execution holds the route's one
# slot, so the second waits, PENDING, while its input is written.
SKIP: {
    skip 'PostgreSQL only (MR_STORE=postgres)', 7
        unless $MR::Test::STORE eq 'postgres';
    $t->create_exec($key, $t->exec_body(model => 'm-one'));
    ok($rc->wait_requests(1, path => '/one', timeout => 20),
        'the route\'s one slot taken');
    # as long as the input created (the account counts its bytes)
    # (an escaped quote after an escaped backslash in it, the text \u0000
    # after a backslash, and a long key next to it: none may make it read
    # whole)
    my ($base, $lk) = (long(), long());
    my $long = qq("$base\\u0041\\/\\u00e9\\\\\\"\\\\u0000");
    my $input = qq({"$lk":1,"prompt":$long,"system":"\\u0042\\/"});
    my $r = $t->create_exec($key, $t->exec_body(model => 'm-one',
        input => { prompt => 'p' x (length($long) - 2),
                   system => 's' x 8, $lk => 1 }));
    my $id = $r->{json}{id};
    is($t->get_exec($key, $id)->{json}{status}, 'PENDING', 'one waits');
    $t->psql("UPDATE mr_executions SET input = '$input' WHERE id = '$id'");
    my $from = mark();
    $rc->release('one');
    my @req = $rc->wait_requests(2, path => '/one', timeout => 20);
    is(scalar(@req), 2, 'the waiting one is sent');
    my $body = @req == 2 ? $req[1]{body} : '';
    ok(index($body, $long) >= 0, 'a long string as stored')
        or diag $body;
    ok(index($body, '"content":"B/"') >= 0,
        'a short one encoded again') or diag $body;
    is_deeply((set_aside($from))[1], [1],
        'set aside at the attempt: the long string');
    is(@req == 2 ? $req[1]{json}{messages}[1]{content} : undef,
        "${base}A/\x{e9}\\\"\\u0000", 'it means the same') or diag $body;
}

my $v = $t->verify($acct->{org});
ok($v->{ok}, 'ledger verified') or diag explain $v;

$t->stop;
$t->check_log;
$rc->stop;
done_testing();
