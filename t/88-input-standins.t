# A provider's request carries the execution's input exactly, whatever
# its strings hold.  The adapter reads the stored input with each long
# string (64 bytes or more as stored) set aside and puts the stored text
# back into the request it encodes (mr_input.c): this test sends, through
# each protocol, long strings next to short ones, in values, arrays,
# nested objects and parameters, long keys (never set aside), escapes of
# every kind (quotes, runs of backslashes before a quote and at a
# string's end, control characters, text that looks like a stand-in or a
# key), multibyte UTF-8, strings on both sides of the length that sets
# one aside, and an input holding the text \u0000 (read whole).  Each
# request decodes to what the protocol makes of the input, and holds each
# long string encoded as jansson encodes it (byte for byte).
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

my $t = MR::Test->new(http => <<"EOF");
modelroute_store %%STORE%%;
modelroute_callback_url http://127.0.0.1:%%PORT%%/v1/callbacks;
modelroute_route chat /p/chat protocol=openai_chat;
modelroute_route anth /p/anth protocol=anthropic;
modelroute_route emb  /p/emb  protocol=openai_embeddings;
modelroute_route img  /p/img  protocol=openai_images;
modelroute_route job  /p/job  protocol=async;
modelroute_model m-chat per_request=0.01 routes=chat:prov attempts=1;
modelroute_model m-anth per_request=0.01 routes=anth:prov attempts=1;
modelroute_model m-emb  per_request=0.01 routes=emb:prov attempts=1;
modelroute_model m-img  per_request=0.01 routes=img:prov attempts=1;
modelroute_model m-job  per_request=0.01 routes=job:prov attempts=1;
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
}
EOF
$t->start;
my $acct = $t->new_account(credit => '100.00');
my $key = $acct->{key};

$rc->set($_, json => chat_completion()) for qw(/chat /anth /emb /img);
$rc->set('/job', status => 202, json => { job_id => 'j' });

# A string as jansson encodes it (compact, UTF-8 as is): the escapes it
# writes are these.
my %ESC = ('"' => '\\"', '\\' => '\\\\', "\b" => '\\b', "\f" => '\\f',
    "\n" => '\\n', "\r" => '\\r', "\t" => '\\t');
sub jenc {
    my ($s) = @_;
    $s =~ s/(["\\\x00-\x1f])/$ESC{$1} \/\/ sprintf('\\u%04X', ord $1)/ge;
    return encode_utf8(qq("$s"));
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
# and a stand-in's digits inside the text, control characters, UTF-8
# (none holds the text \u0000: an input that does is read whole, below)
my @hard = (
    long('"'), long('\\"'), long('\\\\"x'), long('\\'), long('\\\\'),
    long('\\\\\\'), long('":1,"k":"'), long('"u00001"'), long(q(\\"\\)),
    long("\x01\x1f\t\n\r\b\f"), long("\x{e9}\x{263a}\x{1F600}"),
    '"' x 40, '\\' x 40, "\x{1F600}" x 20,
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
    my $req = run('m-chat', '/chat', { messages => \@msgs });
    is_deeply($req->{json}{messages}, \@msgs, 'chat: messages as sent')
        or diag $req->{body};
    holds_each($req, 'chat messages', @hard, @edge);
}

# ---- Anthropic: the system message apart, long stop sequences
{
    my $sys = long('\\');
    my @msgs = ({ role => 'system', content => $sys },
        { role => 'user', content => $hard[1] },
        { role => 'assistant', content => long() },
        { role => 'user', content => [ { type => 'text', text => long() },
            { type => 'image', source => { data => long('=', 200) } } ] });
    my @stop = (long(), long('"'));
    my $req = run('m-anth', '/anth', { messages => \@msgs,
        stop_sequences => \@stop, max_tokens => 90 });
    is_deeply($req->{json}, { model => 'prov', system => $sys,
        messages => [ @msgs[1 .. 3] ], max_tokens => 90,
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
    my $p = long("\x{e9}" x 30);
    my $req = run('m-img', '/img', { prompt => $p, size => '512x512',
        style => long() });
    is_deeply($req->{json}, { model => 'prov', prompt => $p,
        size => '512x512', style => $req->{json}{style} // '' },
        'images: prompt and parameters') or diag $req->{body};
    holds_each($req, 'images', $p);
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

# ---- an input holding the text \u0000 (a backslash, then u0000): read
# whole, and sent as it was
{
    my $s = long('\\u0000');
    my $p = long();
    my $req = run('m-chat', '/chat', { messages => [
        { role => 'user', content => $s }, { role => 'user', content => $p },
    ] });
    is_deeply($req->{json}{messages}, [ { role => 'user', content => $s },
        { role => 'user', content => $p } ], 'the text \u0000: as sent')
        or diag $req->{body};
    holds_each($req, 'the text \u0000', $s, $p);
}

# ---- a long string as the only string, and an input made of a short one
{
    my $p = long('', 64);
    my $req = run('m-chat', '/chat', { prompt => $p });
    is($req->{json}{messages}[0]{content}, $p, 'one long string');
    $req = run('m-chat', '/chat', { prompt => 'hi' });
    is($req->{json}{messages}[0]{content}, 'hi', 'one short string');
}

my $v = $t->verify($acct->{org});
ok($v->{ok}, 'ledger verified') or diag explain $v;

$t->stop;
$t->check_log;
$rc->stop;
done_testing();
