//! The `dagfs` command. All logic lives in the library; see `cli`.

mod cli;
mod ui;

fn main() {
    std::process::exit(cli::main());
}
